/* spanprobe kernel side: HTTP/1.x bytes of selected processes, from syscalls.
 *
 * Loaded by the agent with bcc. Everything that varies is a load-time constant
 * given with -D (see spanprobe/loader.py), never text substitution:
 *   SP_MODE             1 = syscall tracepoints, 2 = kprobes, 3 = fentry/fexit
 *   SP_USE_RINGBUF      1 = BPF ring buffer, 0 = perf buffer
 *   SP_TRACE_ALL        1 = every process (but the agent), 0 = only the `traced` map
 *   SP_SELF_TGID        the agent's own pid, never traced
 *   SP_CAPTURE_BYTES    default bytes copied per syscall buffer (<= SP_MAX_CAPTURE)
 *   SP_RINGBUF_PAGES    ring buffer size in pages
 *   SP_WAKEUP_BYTES     wake the agent once a CPU has output this many bytes (batching)
 *   SP_SLOW_WRITE_NS    a write that took longer reports its own end time
 *   SP_WITH_PORTS       1 = sock:inet_sock_set_state gives client ports
 *   SP_SYSCALL_PREFIX   e.g. __x64_sys_ (kprobe and fentry modes)
 *
 * Only syscall arguments, tracepoint fields and user memory are read: this agent
 * must run with headers that do not match the running kernel exactly, so no kernel
 * structure layout is trusted (pt_regs excepted, which is ABI on x86_64).
 */
#include <uapi/linux/ptrace.h>
#include <asm/unistd.h>         /* __NR_*: this architecture's syscall numbers */
#include "spanprobe_events.h"

#define SP_MODE_TRACEPOINT 1
#define SP_MODE_KPROBE 2
#define SP_MODE_FENTRY 3

#define SP_AF_UNIX 1
#define SP_AF_INET 2
#define SP_AF_INET6 10
#define SP_EINPROGRESS 115
#define SP_TCP_ESTABLISHED 1
#define SP_TCP_SYN_SENT 2
#define SP_TCP_SYN_RECV 3
#define SP_TCP_CLOSE 7
#define SP_IPPROTO_TCP 6

enum sp_op {
    OP_READ = 1, OP_READV, OP_RECVMSG,
    OP_WRITE, OP_WRITEV, OP_SENDMSG,
    OP_ACCEPT, OP_CONNECT, OP_CLOSE, OP_BIND, OP_GETPEERNAME, OP_GETSOCKNAME,
};

enum sp_proto { PROTO_UNKNOWN = 0, PROTO_HTTP = 1, PROTO_OTHER = 2 };

/* Process selection: tgid -> what to capture. */
struct sp_target {
    __u32 capture;     /* bytes per syscall buffer, 0 = SP_CAPTURE_BYTES */
    __u32 excluded;    /* 1 = never trace (with SP_TRACE_ALL) */
};

struct sp_conn_key {
    __u32 tgid;
    __s32 fd;
};

/* Which ends of a connection its open event already told the agent. */
enum sp_known { SP_KNOWN_PEER = 1, SP_KNOWN_LOCAL = 2 };

struct sp_conn_state {
    __u64 conn_id;
    __u8 role;
    __u8 proto;        /* enum sp_proto, decided on the first bytes */
    __u8 known;        /* enum sp_known: a getpeername/getsockname that can tell the
                          agent nothing new is not reported (gunicorn asks every
                          accepted connection its local address: a record per request) */
    __u8 flow;         /* enum sp_flow: where it is between exchanges, and whether it is shed */
    __u32 up_tgid;     /* a server's traced client on this host (0: none), whose shedding */
    __s32 up_fd;       /* it follows: see shed() */
    __u64 up_conn_id;
    __u32 lost;        /* its data this side failed to send: carried in every data event,
                          so the agent sees a gap where the value changes (see conn_lost) */
};

enum sp_flow {
    SP_FLOW_SEEN = 1,          /* bytes have moved on it */
    SP_FLOW_LAST_EGRESS = 2,   /* the last bytes were sent, not received */
    SP_FLOW_SHED = 4,          /* its exchanges are not sent (a CPU budget) */
    SP_FLOW_RESUMED = 8,       /* no longer shed: the next record says so */
};

/* A syscall between its entry and its exit, keyed by pid_tgid. */
struct sp_active {
    __u64 ts;
    __u64 ptr;         /* buffer, iovec array, msghdr or sockaddr */
    __u64 len;         /* count, iovec count or socklen pointer */
    __u64 conn_id;
    __u64 asked;       /* egress: bytes asked for */
    __s32 fd;
    __u32 op;
    __u32 capture;
    __u8 role;
    __u8 pad[3];
};

struct sp_sk_owner {
    __u32 tgid;
    __s32 fd;
    __u64 conn_id;
};

struct sp_comm { char name[16]; };

/* An accepted TCP connection's peer, as accept() and getpeername() give it. */
struct sp_peer_key {
    __u16 family;
    __u16 port;        /* host byte order */
    __u32 pad;
    __u8 addr[16];     /* IPv4 in the first 4 bytes */
};

/* The local end of the accepted connections of one peer. */
struct sp_accepted {
    __u8 addr[16];
    __u16 port;
    __u8 shared;       /* two were open at once: which is which is unknown */
    __u8 pad;
    __s32 open;        /* established and not yet closed */
};

/* CPython layout of one traced process, from spanprobe/pyruntime.py's calibration. */
struct sp_pyrt {
    __u64 runtime;     /* address of _PyRuntime in this process */
    __u32 off_interp;  /* _PyRuntime -> main interpreter */
    __u32 off_head;    /* interpreter -> newest thread state */
    __u32 off_next;    /* thread state -> next (older) one */
    __u32 off_tid;     /* thread state -> native thread id */
    __u32 off_ctx;     /* thread state -> current contextvars.Context */
    __u32 pad;
};
#define SP_PY_MAX_THREADS 16

/* User ABI layouts (stable), declared here so no kernel header is needed. */
struct sp_iovec { __u64 base; __u64 len; };
struct sp_msghdr {
    __u64 name; __s32 namelen; __s32 pad;
    __u64 iov; __u64 iovlen;
    __u64 control; __u64 controllen; __u32 flags;
};

/* One map per concern. */
BPF_HASH(traced, __u32, struct sp_target, 16384);
BPF_HASH(exe_names, struct sp_comm, __u8, 256);
BPF_HASH(ports, __u16, __u8, 256);
BPF_TABLE("lru_hash", struct sp_conn_key, struct sp_conn_state, conns, 65536);
/* Each thread of a selected process keeps its slot from its first hooked syscall until it
 * exits (sched_process_exit deletes it); an exit marks it consumed (op 0). Tracing every
 * process, that would be every thread of the host: there an exit deletes its slot. */
BPF_HASH(active, __u64, struct sp_active, 32768);
BPF_TABLE("lru_hash", __u64, struct sp_sk_owner, connecting, 4096);
#if SP_WITH_PORTS
/* A socket of a wildcard listener (0.0.0.0, ::) does not say which local address it
 * has; same-host linking needs it. Not LRU: an entry evicted while open would let a
 * later connection of the same peer answer for it. */
BPF_HASH(accepted, struct sp_peer_key, struct sp_accepted, 16384);
/* The ports traced processes listen on, a byte each (port p: byte p & 7 of slot p >> 3):
 * only connections accepted on them enter `accepted`, so a socket of any other process
 * costs the TCP state program one array load instead of a hash insert and delete. Set by
 * the agent (through mmap(2): the selected ports, the listeners of the processes it
 * selects, a listener it had to read from /proc) and here (a traced process's bind);
 * never cleared: an entry kept for a connection on a port taken out would outlive it.
 * With SP_TRACE_ALL every port is one. */
BPF_F_TABLE("array", __u32, __u64, listen_ports, 8192, BPF_F_MMAPABLE);

/* Traced client connections by their two ends as the client sees them, so that a traced
 * server end on this host follows the client in shedding (see shed()). */
struct sp_ends_key {
    __u16 family;
    __u16 local_port;
    __u16 peer_port;
    __u16 pad;
    __u8 local_addr[16];
    __u8 peer_addr[16];
};
BPF_TABLE("lru_hash", struct sp_ends_key, struct sp_sk_owner, client_ends, 16384);
#endif
BPF_PERCPU_ARRAY(scratch, struct sp_data_event, 1);
/* asyncio linking: which server connection each task context works for */
BPF_HASH(pyrt, __u32, struct sp_pyrt, 4096);
BPF_TABLE("lru_hash", __u64, struct sp_conn_key, ctx_owner, 65536);

/* Losses, read by the agent through mmap(2). Not a per-CPU array read with bpf(2): on a
 * preemptible kernel (PREEMPT_LAZY is Debian's default from 7.x) a map syscall that is
 * preempted holds the CPU's bpf_prog_active, and every tracepoint or kprobe program that
 * runs on that CPU meanwhile is skipped by the kernel, silently (the agent reads these
 * once a second). */
BPF_F_TABLE("array", __u32, __u64, counters, SP_CNT_MAX, BPF_F_MMAPABLE);
/* What the agent sets while running (enum sp_control), written through mmap(2) too. */
BPF_F_TABLE("array", __u32, __u64, control, SP_CTL_MAX, BPF_F_MMAPABLE);
/* Bytes output on this CPU since it last woke the agent: kernel-only, never read. */
BPF_PERCPU_ARRAY(wakeup_tick, __u64, 1);

#if SP_USE_RINGBUF
BPF_RINGBUF_OUTPUT(events, SP_RINGBUF_PAGES);
#else
BPF_PERF_OUTPUT(events);
#endif

static __always_inline void count(__u32 which)
{
    __u64 *v = counters.lookup(&which);
    if (v)
        __sync_fetch_and_add(v, 1);   /* shared by every CPU; losses are rare */
}

/* 0 when the record was queued. */
static __always_inline int output(void *ctx, void *data, __u64 size)
{
#if SP_USE_RINGBUF
    /* Batched wake-ups: the agent drains the buffer on a timer, and a wake-up is an
     * interrupt this CPU sends itself (a trap in a virtual machine), paid by the traced
     * app. A CPU wakes the agent once it has written SP_WAKEUP_BYTES since its last
     * wake-up (the loader's share of the buffer per CPU), so a burst cannot fill the
     * buffer between two timer ticks. (bcc 0.26 has no ringbuf_query.) */
    __u32 slot = 0;
    __u64 *tick = wakeup_tick.lookup(&slot);
    __u64 flags = BPF_RB_NO_WAKEUP;
    if (tick) {
        *tick += size;
        if (*tick >= SP_WAKEUP_BYTES) {
            *tick = 0;
            flags = BPF_RB_FORCE_WAKEUP;
        }
    }
    /* A record refused by a full buffer takes its wake-up with it: the agent's timer
     * drains the buffer within poll_interval_ms (keeping the count over the mark for the
     * next record would cost every call site here, all inlined, more instructions). */
    if (events.ringbuf_output(data, size, flags) != 0) {
        count(SP_CNT_EVENTS_LOST);
        return -1;
    }
#else
    if (events.perf_submit(ctx, data, (__u32)size) != 0) {
        count(SP_CNT_EVENTS_LOST);
        return -1;
    }
#endif
    return 0;
}

/* Bytes of this connection that will never reach the agent. A loss count rather than a
 * sequence number: it costs the hot path one load (the entry is already looked up), and
 * it has no false gaps where a sequence would: two threads on one socket (a reader and
 * a writer, as Go's server has) reserve ring-buffer slots in another order than they
 * took numbers, and 5.10 has no atomic fetch-add to take them with. The add's result is
 * unused, which every supported kernel and LLVM accept. */
static __always_inline void conn_lost(struct sp_conn_state *cs)
{
    __sync_fetch_and_add(&cs->lost, 1);
}

static __always_inline int selected(__u32 tgid, __u32 *capture)
{
    if (tgid == SP_SELF_TGID)
        return 0;
    struct sp_target *t = traced.lookup(&tgid);
    if (t) {
        if (t->excluded)
            return 0;
        *capture = t->capture ? t->capture : SP_CAPTURE_BYTES;
        return 1;
    }
    *capture = SP_CAPTURE_BYTES;
    return SP_TRACE_ALL;
}

static __always_inline void fill_header(struct sp_header *h, __u32 kind, __u64 ts,
                                        __u64 pid_tgid, __s32 fd, __u64 conn_id)
{
    h->ts_ns = ts;
    h->kind = kind;
    h->tgid = pid_tgid >> 32;
    h->tid = (__u32)pid_tgid;
    h->fd = fd;
    h->conn_id = conn_id;
}

/* HTTP/1.x from its first four bytes: a method or "HTTP". */
static __always_inline __u8 classify(__u64 ubuf, __u64 len)
{
    if (len < 4)
        return PROTO_UNKNOWN;
    __u32 w = 0;
    if (bpf_probe_read_user(&w, sizeof(w), (void *)ubuf) != 0)
        return PROTO_UNKNOWN;
    switch (w) {
    case 0x20544547: /* "GET " */
    case 0x54534f50: /* "POST" */
    case 0x20545550: /* "PUT " */
    case 0x44414548: /* "HEAD" */
    case 0x454c4544: /* "DELE" */
    case 0x43544150: /* "PATC" */
    case 0x4954504f: /* "OPTI" */
    case 0x4e4e4f43: /* "CONN" */
    case 0x43415254: /* "TRAC" */
    case 0x50545448: /* "HTTP" */
        return PROTO_HTTP;
    }
    return PROTO_OTHER;
}

/* Decide once per connection whether it speaks HTTP; 1 = emit these bytes. */
static __always_inline int wanted(struct sp_conn_state *cs, __u64 ubuf, __u64 len)
{
    if (cs->proto == PROTO_HTTP)
        return 1;
    if (cs->proto == PROTO_OTHER)
        return 0;
    __u8 p = classify(ubuf, len);
    if (p == PROTO_OTHER)
        count(SP_CNT_NON_HTTP);
    if (p != PROTO_UNKNOWN)
        cs->proto = p;
    return p != PROTO_OTHER;
}

/* The contextvars.Context the calling Python thread is in, or 0. */
static __always_inline __u64 py_current_ctx(struct sp_pyrt *rt, __u32 tid)
{
    __u64 interp = 0, ts = 0;
    if (bpf_probe_read_user(&interp, sizeof(interp), (void *)(rt->runtime + rt->off_interp)) != 0)
        return 0;
    if (bpf_probe_read_user(&ts, sizeof(ts), (void *)(interp + rt->off_head)) != 0)
        return 0;
#pragma unroll
    for (int i = 0; i < SP_PY_MAX_THREADS; i++) {
        if (!ts)
            return 0;
        __u64 t = 0;
        bpf_probe_read_user(&t, sizeof(t), (void *)(ts + rt->off_tid));
        if ((__u32)t == tid) {
            __u64 c = 0;
            bpf_probe_read_user(&c, sizeof(c), (void *)(ts + rt->off_ctx));
            return c;
        }
        if (bpf_probe_read_user(&ts, sizeof(ts), (void *)(ts + rt->off_next)) != 0)
            return 0;
    }
    return 0;
}

/* The server connection the calling asyncio task works for, or -1. */
static __always_inline __s32 task_owner(__u64 pid_tgid)
{
    __u32 tgid = pid_tgid >> 32;
    struct sp_pyrt *rt = pyrt.lookup(&tgid);
    if (!rt)
        return -1;
    __u64 c = py_current_ctx(rt, (__u32)pid_tgid);
    if (!c)
        return -1;
    struct sp_conn_key *owner = ctx_owner.lookup(&c);
    return owner ? owner->fd : -1;
}

/* Per thread: the server connection it last accepted or read, and the context the
 * thread was in at that moment (the event loop's own). A context created next *from
 * that same context* is work the loop started for that connection: uvicorn's request
 * task (created in data_received, right after the read), Tornado's connection
 * coroutine (right after accept), asyncio's connection_made callback. A context created
 * from the first context entered after it counts too (uvloop runs data_received in the
 * transport's context). A context created from any other unowned context gets no
 * owner: uvloop runs connection_made later, in the server's context, after reads of
 * other connections; guessing there would link calls to the wrong request, so they
 * stay unlinked. */
struct sp_last_server {
    __u64 loop_ctx;
    __u64 first_enter;  /* first context entered since (uvloop runs data_received in
                           the transport's context: PyContext_Enter) */
    __s32 fd;
    __u32 enters;       /* contexts entered since the read or accept */
};
BPF_TABLE("lru_hash", __u64, struct sp_last_server, last_server, 16384);

static __always_inline void note_server(__u64 pid_tgid, __s32 fd)
{
    __u32 tgid = pid_tgid >> 32;
    struct sp_pyrt *rt = pyrt.lookup(&tgid);
    if (!rt)
        return;
    struct sp_last_server e = {.fd = fd};
    e.loop_ctx = py_current_ctx(rt, (__u32)pid_tgid);
    last_server.update(&pid_tgid, &e);
}

/* A CPU budget (the agent's max_cpu_percent): the agent sets the share of connections
 * to leave out, in thousandths, and the kernel side stops sending their bytes, which is
 * where its own cost and the agent's are. A connection's fate is decided only where an
 * exchange starts (a server's first read, or a read after it wrote; a client's first
 * write, or a write after it read), so an exchange is sent whole or not at all. Which
 * connections: those whose conn_id hashes below the share, so the same ones stay out
 * while it holds; the calls out made for a request left out (parent_shed); and a server's
 * requests from a traced client on this host, which follow that client's fate. Each
 * connection shed and each request start not sent is counted; the first record after a
 * shed connection is back says so (SP_DATA_RESUMED). 1 = leave these bytes out. */
/* Per thread, while a budget is set: whether the request it last started serving was
 * left out (1) or kept (0); its calls out follow. Removed when the thread exits. */
BPF_TABLE("lru_hash", __u64, __u8, shed_serving, 16384);

/* Was the request this call out is made for left out (1), kept (0), or is it unknown
 * (-1)? Its task's server connection says (asyncio, the owner known), or else the request
 * its thread last started serving (a thread per request; on an event loop's thread, the
 * last request read, which may be another's: then a call is left out or kept apart from
 * its parent, counted either way). */
static __always_inline int parent_shed(__u64 pid_tgid, __s32 owner)
{
    if (owner >= 0) {
        struct sp_conn_key k = {.tgid = pid_tgid >> 32, .fd = owner};
        struct sp_conn_state *srv = conns.lookup(&k);
        if (srv)
            return (srv->flow & SP_FLOW_SHED) != 0;
    }
    __u8 *v = shed_serving.lookup(&pid_tgid);
    return v ? *v : -1;
}

static __always_inline int shed(struct sp_conn_state *cs, __u8 dir, __u64 pid_tgid, __s32 owner)
{
    __u8 starts = cs->role == SP_ROLE_CLIENT ? SP_DIR_EGRESS : SP_DIR_INGRESS;
    __u8 last = (cs->flow & SP_FLOW_LAST_EGRESS) ? SP_DIR_EGRESS : SP_DIR_INGRESS;
    int boundary = dir == starts && (!(cs->flow & SP_FLOW_SEEN) || last != starts);
    __u8 flow = (cs->flow & ~SP_FLOW_LAST_EGRESS) | SP_FLOW_SEEN;
    if (dir == SP_DIR_EGRESS)
        flow |= SP_FLOW_LAST_EGRESS;
    __u32 slot = SP_CTL_BUDGET;
    __u64 *budget = boundary ? control.lookup(&slot) : 0;   /* only where an exchange starts */
    if (budget && *budget) {
        slot = SP_CTL_SHED_PERMILLE;
        __u64 *share = control.lookup(&slot);
        __u64 limit = share ? *share : 0;
        __u32 h = (__u32)((cs->conn_id * 0x9E3779B97F4A7C15ULL) >> 32) % 1000;
        __u8 out = h < limit;
        if (starts == SP_DIR_EGRESS) {
            int parent = parent_shed(pid_tgid, owner);   /* a known parent decides */
            if (parent >= 0)
                out = parent;
        } else {
            if (cs->up_tgid) {
                /* the request comes from a traced client on this host: its fate was
                 * decided there, and the whole trace shares it */
                struct sp_conn_key k = {.tgid = cs->up_tgid, .fd = cs->up_fd};
                struct sp_conn_state *up = conns.lookup(&k);
                if (up && up->conn_id == cs->up_conn_id)
                    out = (up->flow & SP_FLOW_SHED) != 0;
            }
            shed_serving.update(&pid_tgid, &out);
        }
        if (out) {
            if (!(flow & SP_FLOW_SHED))
                count(SP_CNT_CONNS_SHED);
            flow |= SP_FLOW_SHED;
            count(SP_CNT_REQUESTS_SHED);
        } else if (flow & SP_FLOW_SHED) {
            flow = (flow & ~SP_FLOW_SHED) | SP_FLOW_RESUMED;
        }
    }
    cs->flow = flow;
    return (flow & SP_FLOW_SHED) != 0;
}

static __always_inline void emit_data(void *ctx, struct sp_conn_state *cs, __u64 pid_tgid,
                                      __s32 fd, __u64 conn_id, __u64 ts, __u8 dir, __u8 flags,
                                      __u16 iov_index, __u64 ubuf, __u64 len, __u32 capture,
                                      __s32 owner)
{
    __u32 zero = 0;
    struct sp_data_event *ev = scratch.lookup(&zero);
    if (!ev)
        return;
    fill_header(&ev->h, SP_EV_DATA, ts, pid_tgid, fd, conn_id);
    ev->len = len;
    ev->direction = dir;
    ev->flags = flags;
    ev->iov_index = iov_index;
    ev->owner_fd = owner;
    ev->lost = cs->lost;
    if (cs->flow & SP_FLOW_RESUMED) {
        ev->flags |= SP_DATA_RESUMED;
        cs->flow &= ~SP_FLOW_RESUMED;
    }
    __u64 n = len < capture ? len : capture;
    /* Verifier: the mask is what proves n fits buf; capture <= SP_MAX_CAPTURE
     * already, so it never changes the value. */
    n &= SP_BUF_MASK;
    if (bpf_probe_read_user(ev->buf, n, (void *)ubuf) != 0) {
        count(SP_CNT_READ_FAULTS);
        ev->flags |= SP_DATA_FAULT;
        n = 0;
    }
    ev->captured = n;
    *(__u64 *)ev->tail = 0;
    if (len > n && len >= SP_TAIL_BYTES)
        bpf_probe_read_user(ev->tail, SP_TAIL_BYTES, (void *)(ubuf + len - SP_TAIL_BYTES));
    if (output(ctx, ev, offsetof(struct sp_data_event, buf) + (n & SP_BUF_MASK)) != 0)
        conn_lost(cs);
}

static __always_inline void emit_iovecs(void *ctx, struct sp_conn_state *cs, __u64 pid_tgid,
                                        struct sp_active *a, __u8 dir, __u64 iov, __u64 iovcnt,
                                        __s64 budget, __u64 ts, __s32 owner)
{
    if (iovcnt > SP_MAX_IOV)
        count(SP_CNT_IOV_TRUNCATED);
#pragma unroll
    for (int i = 0; i < SP_MAX_IOV; i++) {
        if (i >= iovcnt || budget <= 0)
            break;
        struct sp_iovec v = {};
        if (bpf_probe_read_user(&v, sizeof(v), (void *)(iov + i * sizeof(v))) != 0) {
            count(SP_CNT_READ_FAULTS);
            conn_lost(cs);      /* the bytes of this and later iovecs are unknown */
            break;
        }
        __u64 take = v.len;
        if (dir == SP_DIR_INGRESS && take > (__u64)budget)
            take = budget;   /* a read fills the iovecs in order up to ret */
        budget -= take;
        emit_data(ctx, cs, pid_tgid, a->fd, a->conn_id, ts, dir,
                  SP_DATA_VECTOR | (dir == SP_DIR_EGRESS ? SP_DATA_AT_ENTRY : 0),
                  i, v.base, take, a->capture, owner);
        a->asked += take;
    }
}

static __always_inline void read_sockaddr(__u64 uaddr, struct sp_conn_event *ev, int peer)
{
    __u16 family = 0;
    __u16 port = 0;
    bpf_probe_read_user(&family, sizeof(family), (void *)uaddr);
    ev->family = family;
    if (family == SP_AF_INET || family == SP_AF_INET6) {
        bpf_probe_read_user(&port, sizeof(port), (void *)(uaddr + 2));
        port = (port >> 8) | (port << 8);
    }
    __u8 *addr = peer ? ev->peer_addr : ev->local_addr;
    if (family == SP_AF_INET)
        bpf_probe_read_user(addr, 4, (void *)(uaddr + 4));
    else if (family == SP_AF_INET6)
        bpf_probe_read_user(addr, 16, (void *)(uaddr + 8));
    if (peer)
        ev->peer_port = port;
    else
        ev->local_port = port;
}

/* The port a bind(2) asks for (network byte order in the sockaddr); 0 for another family
 * or an unreadable address. */
static __always_inline __u16 bind_port(__u64 uaddr)
{
    __u16 family = 0, port = 0;
    bpf_probe_read_user(&family, sizeof(family), (void *)uaddr);
    if (family != SP_AF_INET && family != SP_AF_INET6)
        return 0;
    bpf_probe_read_user(&port, sizeof(port), (void *)(uaddr + 2));
    return (port >> 8) | (port << 8);
}

/* Is `port` one of `listen_ports`? */
static __always_inline int listen_port(__u16 port)
{
#if SP_WITH_PORTS
    if (SP_TRACE_ALL)
        return 1;
    __u32 slot = port >> 3;
    __u8 *b = (__u8 *)listen_ports.lookup(&slot);
    return b && b[port & 7];
#else
    return 0;
#endif
}

/* bind(2): a selected port selects the process; a traced process's port is one whose
 * accepted connections need their local end (a single byte store: no lost update). */
static __always_inline void on_bind(__u32 tgid, __u64 uaddr)
{
    struct sp_target *t = traced.lookup(&tgid);
    if (t && t->excluded)
        return;
    __u16 port = bind_port(uaddr);
    if (!port)
        return;
#if SP_WITH_PORTS
    if (t) {
        __u32 slot = port >> 3;
        __u8 *b = (__u8 *)listen_ports.lookup(&slot);
        if (b)
            b[port & 7] = 1;
        return;
    }
#endif
    if (!t && ports.lookup(&port)) {
        struct sp_target n = {};
        traced.update(&tgid, &n);
    }
}

/* The operation of a syscall, from its number. In tracepoint and kprobe modes one enter
 * and one exit program serve every hooked syscall: compiled and verified once instead of
 * once per syscall (a tenth of the instructions; under emulation, minutes less at each
 * start). fentry programs are bound to one kernel function each when they load, and stay
 * one per syscall. A number with no operation here returns 0: the program ignores it. */
static __always_inline __u32 op_of_nr(__s64 nr)
{
    switch (nr) {
    case __NR_read: case __NR_recvfrom: return OP_READ;
    case __NR_readv: return OP_READV;
    case __NR_recvmsg: return OP_RECVMSG;
    case __NR_write: case __NR_sendto: return OP_WRITE;
    case __NR_writev: return OP_WRITEV;
    case __NR_sendmsg: return OP_SENDMSG;
    case __NR_accept: case __NR_accept4: return OP_ACCEPT;
    case __NR_connect: return OP_CONNECT;
    case __NR_close: return OP_CLOSE;
    case __NR_bind: return OP_BIND;
    case __NR_getpeername: return OP_GETPEERNAME;
    case __NR_getsockname: return OP_GETSOCKNAME;
    }
    return 0;
}

/* The calling thread's call in flight, written into its slot in place: a syscall then
 * costs a hash lookup where an update at its entry and a delete at its exit took the
 * bucket's lock and the map's free list twice. Only this thread writes its slot (and the
 * TCP state program, reading it, runs in this thread's connect()). 0 when recorded. */
static __always_inline int active_put(__u64 pid_tgid, struct sp_active *a)
{
#if !SP_TRACE_ALL       /* tracing every process, an exit deletes the slot (sp_on_exit) */
    struct sp_active *slot = active.lookup(&pid_tgid);
    if (slot) {
        *slot = *a;
        return 0;
    }
#endif
    if (active.update(&pid_tgid, a) != 0) {
        count(SP_CNT_ACTIVE_FULL);
        return -1;
    }
    return 0;
}

static __always_inline int sp_on_enter(void *ctx, __u32 op, __u64 a0, __u64 a1, __u64 a2)
{
    if (op == 0)
        return 0;
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 tgid = pid_tgid >> 32;
    __u32 capture = 0;
    if (op == OP_BIND) {
        /* Port selection for services that start listening after the agent. Judged before
         * `selected`: the process that binds a selected port is not selected yet. */
        if (tgid != SP_SELF_TGID)
            on_bind(tgid, a1);
        return 0;
    }
    if (!selected(tgid, &capture))
        return 0;
    __s32 fd = (__s32)a0;
    __u64 ts = bpf_ktime_get_ns();
    struct sp_active a = {};
    a.ts = ts;
    a.fd = fd;
    a.op = op;
    a.capture = capture;

    if (op == OP_ACCEPT || op == OP_CONNECT) {
        a.ptr = a1;
        a.len = a2;
        if (op == OP_CONNECT)
            a.conn_id = ts;
        active_put(pid_tgid, &a);
        return 0;
    }

    struct sp_conn_key key = {.tgid = tgid, .fd = fd};
    struct sp_conn_state *cs = conns.lookup(&key);
    if (!cs)
        return 0;
    if (op == OP_GETPEERNAME || op == OP_GETSOCKNAME) {
        __u8 told = op == OP_GETSOCKNAME ? SP_KNOWN_LOCAL : SP_KNOWN_PEER | SP_KNOWN_LOCAL;
        if ((cs->known & told) == told)
            return 0;   /* the agent has what the exit would report */
        a.ptr = a1;
        a.conn_id = cs->conn_id;
        a.role = cs->role;
        active_put(pid_tgid, &a);
        return 0;
    }
    if (op == OP_CLOSE) {
        struct sp_conn_event ev = {};
        fill_header(&ev.h, SP_EV_CONN_CLOSE, ts, pid_tgid, fd, cs->conn_id);
        ev.listen_fd = -1;
        ev.role = cs->role;
        conns.delete(&key);
        output(ctx, &ev, sizeof(ev));
        return 0;
    }
    if (cs->proto == PROTO_OTHER)
        return 0;
    a.conn_id = cs->conn_id;
    a.role = cs->role;

    if (op == OP_SENDMSG || op == OP_RECVMSG) {
        struct sp_msghdr m = {};
        if (bpf_probe_read_user(&m, sizeof(m), (void *)a1) != 0) {
            count(SP_CNT_READ_FAULTS);
            conn_lost(cs);
            return 0;
        }
        a1 = m.iov;
        a2 = m.iovlen;
        op = (op == OP_SENDMSG) ? OP_WRITEV : OP_READV;
        a.op = op;
    }
    a.ptr = a1;
    a.len = a2;

    if (op == OP_WRITE) {
        /* Egress is emitted at entry, while the bytes are in the user buffer and
         * before the peer can possibly read them: a traced peer's read on this
         * host then always comes later in the ring buffer (cross-service links). */
        if (!wanted(cs, a1, a2))
            return 0;
        __s32 owner = task_owner(pid_tgid);
        if (shed(cs, SP_DIR_EGRESS, pid_tgid, owner))
            return 0;
        emit_data(ctx, cs, pid_tgid, fd, a.conn_id, ts, SP_DIR_EGRESS, SP_DATA_AT_ENTRY, 0,
                  a1, a2, capture, owner);
        a.asked = a2;
    } else if (op == OP_WRITEV) {
        struct sp_iovec first = {};
        bpf_probe_read_user(&first, sizeof(first), (void *)a1);
        if (!wanted(cs, first.base, first.len))
            return 0;
        __s32 owner = task_owner(pid_tgid);
        if (shed(cs, SP_DIR_EGRESS, pid_tgid, owner))
            return 0;
        emit_iovecs(ctx, cs, pid_tgid, &a, SP_DIR_EGRESS, a1, a2, 0x7fffffffffffffffLL, ts, owner);
    }
    if (active_put(pid_tgid, &a) != 0) {
        if (op == OP_READ || op == OP_READV)
            conn_lost(cs);      /* its exit will not find what to report */
    }
    return 0;
}

/* The local address of the connection accept() or getpeername() just reported the
 * peer of, when exactly one open connection has that peer. */
static __always_inline void local_of_accepted(struct sp_conn_event *ev)
{
#if SP_WITH_PORTS
    if (ev->family != SP_AF_INET && ev->family != SP_AF_INET6)
        return;
    struct sp_peer_key k = {.family = ev->family, .port = ev->peer_port};
    __builtin_memcpy(k.addr, ev->peer_addr, 16);
    struct sp_accepted *v = accepted.lookup(&k);
    if (!v || v->shared)
        return;
    __builtin_memcpy(ev->local_addr, v->addr, 16);
    ev->local_port = v->port;
#endif
}

/* An end is known when it has a port and an address that is not a wildcard: what
 * the agent needs to name and link the connection (a wildcard listener's accepted
 * socket whose local address the `accepted` map did not give is not). */
static __always_inline int addr_set(const __u8 *addr)
{
    __u64 hi = 0, lo = 0;
    __builtin_memcpy(&hi, addr, 8);
    __builtin_memcpy(&lo, addr + 8, 8);
    return (hi | lo) != 0;
}

static __always_inline __u8 known_ends(struct sp_conn_event *ev)
{
    if (ev->family != SP_AF_INET && ev->family != SP_AF_INET6)
        return 0;
    __u8 known = 0;
    if (ev->peer_port && addr_set(ev->peer_addr))
        known |= SP_KNOWN_PEER;
    if (ev->local_port && addr_set(ev->local_addr))
        known |= SP_KNOWN_LOCAL;
    return known;
}

static __always_inline int v4_mapped(const __u8 *a)
{
    __u64 hi = 0;
    __u32 mid = 0;
    __builtin_memcpy(&hi, a, 8);
    __builtin_memcpy(&mid, a + 8, 4);
    return hi == 0 && mid == 0xffff0000;    /* ::ffff:a.b.c.d, little-endian load */
}

/* A server connection whose two ends are known: the traced client on this host at its
 * other end, if any, whose shedding it follows (see shed()). At accept, or at the
 * getpeername that told the peer accept() was not asked for (libuv). */
static __always_inline void follow_client(struct sp_conn_state *cs, struct sp_conn_event *ev)
{
#if SP_WITH_PORTS
    if (cs->up_tgid || known_ends(ev) != (SP_KNOWN_PEER | SP_KNOWN_LOCAL))
        return;
    struct sp_ends_key k = {.family = ev->family, .local_port = ev->peer_port,
                            .peer_port = ev->local_port};
    __builtin_memcpy(k.local_addr, ev->peer_addr, 16);
    __builtin_memcpy(k.peer_addr, ev->local_addr, 16);
    if (k.family == SP_AF_INET6 && v4_mapped(k.local_addr) && v4_mapped(k.peer_addr)) {
        /* an IPv4 client of a dual-stack server: the client's socket says AF_INET */
        k.family = SP_AF_INET;
        __builtin_memmove(k.local_addr, k.local_addr + 12, 4);
        __builtin_memmove(k.peer_addr, k.peer_addr + 12, 4);
        __builtin_memset(k.local_addr + 4, 0, 12);
        __builtin_memset(k.peer_addr + 4, 0, 12);
    }
    struct sp_sk_owner *up = client_ends.lookup(&k);
    if (up) {
        cs->up_tgid = up->tgid;
        cs->up_fd = up->fd;
        cs->up_conn_id = up->conn_id;
    }
#endif
}

static __always_inline void open_conn(void *ctx, __u64 pid_tgid, struct sp_active *a,
                                      __s32 fd, __u8 role, __u64 conn_id, __u64 ts, __u8 flags)
{
    struct sp_conn_event ev = {};
    fill_header(&ev.h, SP_EV_CONN_OPEN, ts, pid_tgid, fd, conn_id);
    ev.role = role;
    ev.flags = flags;
    ev.listen_fd = role == SP_ROLE_SERVER ? a->fd : -1;
    if (a->ptr) {
        read_sockaddr(a->ptr, &ev, 1);
        if (role == SP_ROLE_SERVER)
            local_of_accepted(&ev);
    }
    struct sp_conn_key key = {.tgid = pid_tgid >> 32, .fd = fd};
    struct sp_conn_state cs = {.conn_id = conn_id, .role = role,
                               .known = known_ends(&ev)};
    if (role == SP_ROLE_SERVER)
        follow_client(&cs, &ev);
    if (conns.update(&key, &cs) != 0)
        count(SP_CNT_CONN_FULL);
    output(ctx, &ev, sizeof(ev));
}

/* The operations an exit program can meet, as a mask of (1 << op). Programs bound to one
 * syscall (fentry) pass a constant mask of the operations its entry records, so the
 * compiler drops every other branch: eleven exits each carrying the whole body were 30k
 * of fentry's 36k instructions, and compile and verify time in a guest follows that. */
#define SP_OPS(o) (1u << (o))
#define SP_ALL_OPS 0xffffffffu
#define SP_EXIT_IS(o) ((ops & SP_OPS(o)) && a.op == (o))

/* `is_accept`: this exit is accept()'s, for one whose entry was not seen. Tracepoints
 * tell the syscall's number and fire at every syscall's exit; fexit programs are bound
 * to one syscall, but like kretprobes (which cannot tell, and pass 0) fire only for calls
 * that entered after they were attached: for them, only a process selected while in
 * accept(). */
static __always_inline int sp_on_exit(void *ctx, __s64 ret, __u32 ops, int is_accept)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    struct sp_active *ap = active.lookup(&pid_tgid);
    struct sp_active a = {};
    __u8 open_flags = 0;
    if (ap && ap->op) {
        a = *ap;
#if SP_TRACE_ALL
        active.delete(&pid_tgid);   /* every thread of the host would keep one */
#else
        ap->op = 0;     /* consumed; the slot stays the thread's (active_put) */
#endif
        if (ops != SP_ALL_OPS && !(ops & SP_OPS(a.op)))
            return 0;   /* left by an entry whose exit was never seen (attached in between) */
    } else {
        /* An accept() that returned a connection whose entry was not seen: the thread
         * entered it before the agent attached (a server blocked in accept() while the
         * agent started: adoption's /proc reading came before the connection existed),
         * or before its process was selected (a service that binds a selected port and
         * blocks in accept() at once), or the `active` map was full. Left alone, the
         * connection would go untraced for its whole life (a keep-alive one: every
         * request on it). Its listening socket and peer are unknown here: the agent
         * reads both ends from /proc (SP_OPEN_EXIT_ONLY). The same path as a seen
         * accept's below, so the program carries it once. */
        __u32 capture = 0;
        if (!is_accept || ret < 0 || !selected(pid_tgid >> 32, &capture))
            return 0;
        a.fd = -1;
        a.op = OP_ACCEPT;
        open_flags = SP_OPEN_EXIT_ONLY;
    }
    __u64 ts = bpf_ktime_get_ns();

    if (SP_EXIT_IS(OP_ACCEPT)) {
        if (ret >= 0) {
            open_conn(ctx, pid_tgid, &a, (__s32)ret, SP_ROLE_SERVER, ts, ts, open_flags);
            note_server(pid_tgid, (__s32)ret);
        }
        return 0;
    }
    if (SP_EXIT_IS(OP_CONNECT)) {
        if (ret == 0 || ret == -SP_EINPROGRESS)
            open_conn(ctx, pid_tgid, &a, a.fd, SP_ROLE_CLIENT, a.conn_id, ts, 0);
        return 0;
    }
    if (SP_EXIT_IS(OP_GETPEERNAME) || SP_EXIT_IS(OP_GETSOCKNAME)) {
        if (ret != 0 || !a.ptr)
            return 0;
        struct sp_conn_event ev = {};
        fill_header(&ev.h, SP_EV_CONN_ADDR, ts, pid_tgid, a.fd, a.conn_id);
        ev.listen_fd = -1;
        ev.role = a.role;
        read_sockaddr(a.ptr, &ev, a.op == OP_GETPEERNAME);
        if (a.op == OP_GETPEERNAME && a.role == SP_ROLE_SERVER) {
            local_of_accepted(&ev);
            struct sp_conn_key key = {.tgid = pid_tgid >> 32, .fd = a.fd};
            struct sp_conn_state *cs = conns.lookup(&key);
            if (cs && cs->conn_id == a.conn_id)
                follow_client(cs, &ev);
        }
        output(ctx, &ev, sizeof(ev));
        return 0;
    }
    if (SP_EXIT_IS(OP_WRITE) || SP_EXIT_IS(OP_WRITEV)) {
        /* Entry already sent the bytes; report only what entry could not know. */
        if (a.op == OP_WRITEV || ret != (__s64)a.asked || ts - a.ts > SP_SLOW_WRITE_NS) {
            struct sp_write_result_event ev = {};
            fill_header(&ev.h, SP_EV_WRITE_RESULT, ts, pid_tgid, a.fd, a.conn_id);
            ev.ret = ret;
            ev.asked = a.asked;
            output(ctx, &ev, sizeof(ev));
        }
        return 0;
    }
    if (!(ops & (SP_OPS(OP_READ) | SP_OPS(OP_READV))) || ret <= 0)
        return 0;
    struct sp_conn_key key = {.tgid = pid_tgid >> 32, .fd = a.fd};
    struct sp_conn_state *cs = conns.lookup(&key);
    if (!cs || cs->conn_id != a.conn_id)
        return 0;
    /* before the budget's decision: a task created for a request left out has that
     * request's connection as its owner, not an earlier one's (parent_shed) */
    if (cs->role == SP_ROLE_SERVER && cs->proto != PROTO_OTHER)
        note_server(pid_tgid, a.fd);
    if (SP_EXIT_IS(OP_READ)) {
        if (!wanted(cs, a.ptr, ret) || shed(cs, SP_DIR_INGRESS, pid_tgid, -1))
            return 0;
        emit_data(ctx, cs, pid_tgid, a.fd, a.conn_id, ts, SP_DIR_INGRESS, 0, 0, a.ptr, ret,
                  a.capture, -1);
    } else if (SP_EXIT_IS(OP_READV)) {
        struct sp_iovec first = {};
        bpf_probe_read_user(&first, sizeof(first), (void *)a.ptr);
        if (!wanted(cs, first.base, first.len < (__u64)ret ? first.len : (__u64)ret)
            || shed(cs, SP_DIR_INGRESS, pid_tgid, -1))
            return 0;
        emit_iovecs(ctx, cs, pid_tgid, &a, SP_DIR_INGRESS, a.ptr, a.len, ret, ts, -1);
    }
    return 0;
}

/* ---- process lifecycle (same tracepoints in every mode) ---- */

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 tgid = pid_tgid >> 32;
    struct sp_proc_event ev = {};
    fill_header(&ev.h, SP_EV_PROC_EXEC, bpf_ktime_get_ns(), pid_tgid, -1, 0);
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
    TP_DATA_LOC_READ_STR(ev.filename, filename, sizeof(ev.filename));
    pyrt.delete(&tgid);   /* a new program image: its interpreter layout is unknown */
    if (args->old_pid != tgid) {
        /* a thread other than the leader ran execve and took the leader's id: its own
         * slot would outlive it (sched_process_exit is not told of that id) */
        __u64 old = ((__u64)tgid << 32) | (__u32)args->old_pid;
        active.delete(&old);
    }
    struct sp_comm key = {};
    __builtin_memcpy(key.name, ev.comm, sizeof(key.name));
    if (exe_names.lookup(&key)) {
        struct sp_target t = {};
        traced.update(&tgid, &t);
    }
    output(args, &ev, sizeof(ev));
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 parent = pid_tgid >> 32;
    struct sp_target *t = traced.lookup(&parent);
    if (!t)
        return 0;
    /* child_pid is a thread id for new threads; such keys are never looked up as
     * a tgid and are removed when the thread exits. */
    __u32 child = args->child_pid;
    struct sp_target copy = *t;
    traced.update(&child, &copy);
    /* a forked worker (gunicorn, uvicorn --workers) has its parent's memory layout */
    struct sp_pyrt *rt = pyrt.lookup(&parent);
    if (rt) {
        struct sp_pyrt rcopy = *rt;
        pyrt.update(&child, &rcopy);
    }
    struct sp_proc_event ev = {};
    fill_header(&ev.h, SP_EV_PROC_FORK, bpf_ktime_get_ns(), pid_tgid, -1, 0);
    ev.ppid = parent;
    ev.h.tgid = child;
    ev.h.tid = child;
    output(args, &ev, sizeof(ev));
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 tid = (__u32)pid_tgid;
    __u32 tgid = pid_tgid >> 32;
    active.delete(&pid_tgid);
    shed_serving.delete(&pid_tgid);
    if (tid != tgid) {
        traced.delete(&tid);
        return 0;
    }
    __u32 capture = 0;
    int was = selected(tgid, &capture);
    traced.delete(&tgid);
    pyrt.delete(&tgid);
    if (!was)
        return 0;
    struct sp_proc_event ev = {};
    fill_header(&ev.h, SP_EV_PROC_EXIT, bpf_ktime_get_ns(), pid_tgid, -1, 0);
    output(args, &ev, sizeof(ev));
    return 0;
}

#if SP_WITH_PORTS
/* Passive open done (the handshake's last ACK, before accept() can return it).
 * Key and local end as the tracepoint gives them: v4-mapped addresses for IPv4
 * peers of an IPv6 socket, as accept() gives them too. */
static __always_inline void note_accepted(struct sp_peer_key *k, struct sp_accepted *v)
{
    v->open = 1;
    struct sp_accepted *old = accepted.lookup(k);
    if (old) {
        old->shared = 1;
        __sync_fetch_and_add(&old->open, 1);
    } else if (accepted.insert(k, v) != 0) {
        old = accepted.lookup(k);       /* another CPU inserted it first */
        if (old) {
            old->shared = 1;
            __sync_fetch_and_add(&old->open, 1);
        } else {
            count(SP_CNT_ACCEPTED_FULL);
        }
    }
}

/* Any TCP socket closed: if it was an accepted one, one fewer with its peer. A
 * client socket closing has the server as peer, found here only when its local
 * end differs from the entry's (checked for an entry not shared). */
static __always_inline void forget_accepted(struct sp_peer_key *k, struct sp_accepted *v)
{
    struct sp_accepted *old = accepted.lookup(k);
    if (!old)
        return;
    if (!old->shared) {
        if (old->port != v->port)
            return;
#pragma unroll
        for (int i = 0; i < 16; i++)
            if (old->addr[i] != v->addr[i])
                return;
    }
    __sync_fetch_and_add(&old->open, -1);   /* its result: an atomic older LLVMs refuse */
    if (old->open <= 0)
        accepted.delete(k);
}

/* A client's own port is chosen inside connect(), after SYN_SENT: remember which
 * socket the connecting thread owns, and report its ports once ESTABLISHED. */
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != SP_IPPROTO_TCP)
        return 0;
    __u64 sk = (__u64)args->skaddr;
    int opened = args->oldstate == SP_TCP_SYN_RECV && args->newstate == SP_TCP_ESTABLISHED;
    if (opened || (args->newstate == SP_TCP_CLOSE && args->oldstate != SP_TCP_SYN_SENT
                   && args->oldstate != SP_TCP_SYN_RECV)) {
        if (!listen_port(args->sport))
            return 0;       /* not a traced listener's: a client's, or another process's */
        struct sp_peer_key k = {.family = args->family, .port = args->dport};
        struct sp_accepted v = {.port = args->sport};
        if (args->family == SP_AF_INET6) {
            __builtin_memcpy(k.addr, args->daddr_v6, 16);
            __builtin_memcpy(v.addr, args->saddr_v6, 16);
        } else {
            __builtin_memcpy(k.addr, args->daddr, 4);
            __builtin_memcpy(v.addr, args->saddr, 4);
        }
        if (opened)
            note_accepted(&k, &v);
        else
            forget_accepted(&k, &v);
        return 0;
    }
    if (args->newstate == SP_TCP_SYN_SENT) {
        __u64 pid_tgid = bpf_get_current_pid_tgid();
        struct sp_active *a = active.lookup(&pid_tgid);
        if (!a || a->op != OP_CONNECT)
            return 0;
        struct sp_sk_owner o = {.tgid = pid_tgid >> 32, .fd = a->fd, .conn_id = a->conn_id};
        connecting.update(&sk, &o);
        return 0;
    }
    if (args->newstate != SP_TCP_ESTABLISHED && args->oldstate == SP_TCP_SYN_SENT) {
        connecting.delete(&sk);
        return 0;
    }
    if (args->newstate != SP_TCP_ESTABLISHED)
        return 0;
    struct sp_sk_owner *o = connecting.lookup(&sk);
    if (!o)
        return 0;
    struct sp_conn_event ev = {};
    fill_header(&ev.h, SP_EV_CONN_PORTS, bpf_ktime_get_ns(), 0, o->fd, o->conn_id);
    ev.h.tgid = o->tgid;
    ev.h.tid = o->tgid;
    ev.listen_fd = -1;
    ev.role = SP_ROLE_CLIENT;
    ev.family = args->family;
    ev.local_port = args->sport;
    ev.peer_port = args->dport;
    if (args->family == SP_AF_INET6) {
        __builtin_memcpy(ev.local_addr, args->saddr_v6, 16);
        __builtin_memcpy(ev.peer_addr, args->daddr_v6, 16);
    } else {
        __builtin_memcpy(ev.local_addr, args->saddr, 4);
        __builtin_memcpy(ev.peer_addr, args->daddr, 4);
    }
    struct sp_ends_key k = {.family = ev.family, .local_port = ev.local_port, .peer_port = ev.peer_port};
    __builtin_memcpy(k.local_addr, ev.local_addr, 16);
    __builtin_memcpy(k.peer_addr, ev.peer_addr, 16);
    client_ends.update(&k, o);
    connecting.delete(&sk);
    output(args, &ev, sizeof(ev));
    return 0;
}
#endif

#if SP_WITH_PYTHON
/* uretprobe on PyContext_CopyCurrent: a new context (a task or a callback) is born
 * inside the current one. It works for whatever its parent works for; born in the
 * loop's own context, it works for the server connection this thread last read. */
int sp_py_ctx_copy(struct pt_regs *ctx)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 tgid = pid_tgid >> 32;
    struct sp_pyrt *rt = pyrt.lookup(&tgid);
    if (!rt)
        return 0;
    __u64 created = PT_REGS_RC(ctx);
    if (!created)
        return 0;
    __u64 parent = py_current_ctx(rt, (__u32)pid_tgid);
    struct sp_conn_key *owner = parent ? ctx_owner.lookup(&parent) : 0;
    if (owner) {
        struct sp_conn_key copy = *owner;
        ctx_owner.update(&created, &copy);
        return 0;
    }
    struct sp_last_server *e = last_server.lookup(&pid_tgid);
    if (e && (e->loop_ctx == parent || (e->enters == 1 && e->first_enter == parent))) {
        struct sp_conn_key k = {.tgid = tgid, .fd = e->fd};
        ctx_owner.update(&created, &k);
        return 0;
    }
    ctx_owner.delete(&created);   /* an address reused by a context nobody owns */
    return 0;
}

/* uprobe on PyContext_Enter (uvloop enters a context for every callback it runs) */
int sp_py_ctx_enter(struct pt_regs *ctx)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    struct sp_last_server *e = last_server.lookup(&pid_tgid);
    if (!e)
        return 0;
    if (e->enters == 0)
        e->first_enter = PT_REGS_PARM1(ctx);
    if (e->enters < 1000)
        e->enters++;
    return 0;
}
#endif

/* ---- syscall hooks: one front-end per attach mode, same handlers behind ---- */

#define SP_CAT(a, b, c) a##b##c
#define SP_XCAT(a, b, c) SP_CAT(a, b, c)

#if SP_MODE == SP_MODE_TRACEPOINT
/* syscalls:sys_enter_* / sys_exit_*: the common header, the syscall number, then
 * each argument in 8 bytes. This layout has not changed since tracepoints
 * existed, so it is declared once rather than per event. The agent attaches these two
 * programs to the enter and exit tracepoints of every syscall it hooks. */
struct sp_tp_enter { __u64 common; __s32 nr; __u32 pad; __u64 args[6]; };
struct sp_tp_exit { __u64 common; __s32 nr; __u32 pad; __s64 ret; };
int sp_enter(struct sp_tp_enter *tp)
{
    return sp_on_enter(tp, op_of_nr(tp->nr), tp->args[0], tp->args[1], tp->args[2]);
}
int sp_exit(struct sp_tp_exit *tp)
{
    return sp_on_exit(tp, tp->ret, SP_ALL_OPS, tp->nr == __NR_accept || tp->nr == __NR_accept4);
}
/* close(2) has one argument: the kernel refuses a program that reads past the end of a
 * tracepoint's record (sp_enter reads three), so close has its own, reading one. */
int sp_enter_close(struct sp_tp_enter *tp) { return sp_on_enter(tp, OP_CLOSE, tp->args[0], 0, 0); }

#elif SP_MODE == SP_MODE_KPROBE
/* __x64_sys_* take the user's registers as their only argument, the syscall's number in
 * orig_ax. The agent attaches these two programs to every syscall it hooks. */
int sp_enter(struct pt_regs *ctx)
{
    struct pt_regs *regs = (struct pt_regs *)PT_REGS_PARM1(ctx);
    __u64 a0 = 0, a1 = 0, a2 = 0, nr = 0;
    bpf_probe_read_kernel(&nr, sizeof(nr), &regs->orig_ax);
    bpf_probe_read_kernel(&a0, sizeof(a0), &regs->di);
    bpf_probe_read_kernel(&a1, sizeof(a1), &regs->si);
    bpf_probe_read_kernel(&a2, sizeof(a2), &regs->dx);
    return sp_on_enter(ctx, op_of_nr((__s64)nr), a0, a1, a2);
}
int sp_exit(struct pt_regs *ctx) { return sp_on_exit(ctx, (__s64)PT_REGS_RC(ctx), SP_ALL_OPS, 0); }

#elif SP_MODE == SP_MODE_FENTRY
/* bcc attaches fentry/fexit programs at load, by their names. The names are bcc's own
 * business (kfunc__<fn> in 0.26, kfunc__vmlinux__<fn> since module support came, and
 * a bare kfunc__<fn> there is read as module "" + function "x64_sys_<name>": ENOENT),
 * so bcc's KFUNC_PROBE/KRETFUNC_PROBE name them. Without an argument list (0.26's
 * BTF-derived prototype clashes with explicit ones), the context is the raw u64 array:
 * ctx[0] is the wrapper's only argument (the user's pt_regs), ctx[1] the return value. */
static __always_inline int sp_fe_enter(unsigned long long *ctx, __u32 op)
{
    struct pt_regs *regs = (struct pt_regs *)ctx[0];
    __u64 a0 = 0, a1 = 0, a2 = 0;
    bpf_probe_read_kernel(&a0, sizeof(a0), &regs->di);
    bpf_probe_read_kernel(&a1, sizeof(a1), &regs->si);
    bpf_probe_read_kernel(&a2, sizeof(a2), &regs->dx);
    return sp_on_enter(ctx, op, a0, a1, a2);
}
/* one more expansion level, so SP_SYSCALL_PREFIX is expanded before bcc's ## pastes */
#define SP_KFUNC(fn) KFUNC_PROBE(fn)
#define SP_KRETFUNC(fn) KRETFUNC_PROBE(fn)
#define SP_FN(name) SP_XCAT(SP_SYSCALL_PREFIX, name, )
#define SP_SYSCALL(name, op, exit_ops)                                           \
    SP_KFUNC(SP_FN(name)) { return sp_fe_enter(ctx, op); }                        \
    SP_KRETFUNC(SP_FN(name)) { return sp_on_exit(ctx, (__s64)ctx[1], exit_ops,            \
                                                 (exit_ops) == SP_OPS(OP_ACCEPT)); }
#define SP_SYSCALL_ENTRY(name, op)                                               \
    SP_KFUNC(SP_FN(name)) { return sp_fe_enter(ctx, op); }

/* Which syscalls are compiled is decided by the agent (SP_HOOK_<name>=1), from the
 * probe table in spanprobe/probes.py and what this kernel offers. */
#if SP_HOOK_read
SP_SYSCALL(read, OP_READ, SP_OPS(OP_READ))
#endif
#if SP_HOOK_recvfrom
SP_SYSCALL(recvfrom, OP_READ, SP_OPS(OP_READ))
#endif
#if SP_HOOK_readv
SP_SYSCALL(readv, OP_READV, SP_OPS(OP_READV))
#endif
#if SP_HOOK_recvmsg
SP_SYSCALL(recvmsg, OP_RECVMSG, SP_OPS(OP_READV))
#endif
#if SP_HOOK_write
SP_SYSCALL(write, OP_WRITE, SP_OPS(OP_WRITE))
#endif
#if SP_HOOK_sendto
SP_SYSCALL(sendto, OP_WRITE, SP_OPS(OP_WRITE))
#endif
#if SP_HOOK_writev
SP_SYSCALL(writev, OP_WRITEV, SP_OPS(OP_WRITEV))
#endif
#if SP_HOOK_sendmsg
SP_SYSCALL(sendmsg, OP_SENDMSG, SP_OPS(OP_WRITEV))
#endif
#if SP_HOOK_accept
SP_SYSCALL(accept, OP_ACCEPT, SP_OPS(OP_ACCEPT))
#endif
#if SP_HOOK_accept4
SP_SYSCALL(accept4, OP_ACCEPT, SP_OPS(OP_ACCEPT))
#endif
#if SP_HOOK_connect
SP_SYSCALL(connect, OP_CONNECT, SP_OPS(OP_CONNECT))
#endif
#if SP_HOOK_close
SP_SYSCALL_ENTRY(close, OP_CLOSE)
#endif
#if SP_HOOK_bind
SP_SYSCALL_ENTRY(bind, OP_BIND)
#endif
#if SP_HOOK_getpeername
SP_SYSCALL(getpeername, OP_GETPEERNAME, SP_OPS(OP_GETPEERNAME))
#endif
#if SP_HOOK_getsockname
SP_SYSCALL(getsockname, OP_GETSOCKNAME, SP_OPS(OP_GETSOCKNAME))
#endif
#endif
