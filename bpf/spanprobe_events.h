/* Event records shared by the kernel side (spanprobe.bpf.c) and the agent.
 *
 * The agent mirrors these layouts in spanprobe/events.py with struct format strings;
 * tests/unit/test_event_layout.py compiles this header with the host C compiler and
 * checks every offset, so the two sides cannot drift apart silently.
 *
 * Every record starts with struct sp_header; `kind` says which record follows.
 */
#ifndef SPANPROBE_EVENTS_H
#define SPANPROBE_EVENTS_H

/* Largest capture the kernel side may copy from one syscall buffer. The configured
 * capture (capture_bytes) is at most this; the scratch buffer is twice as large so
 * that a mask, which the verifier understands, can bound the copy length. */
#define SP_MAX_CAPTURE 4096
#define SP_BUF_SIZE (SP_MAX_CAPTURE * 2)
#define SP_BUF_MASK (SP_BUF_SIZE - 1)
#define SP_TAIL_BYTES 8
#define SP_MAX_IOV 4
#define SP_PATH_BYTES 128

enum sp_kind {
    SP_EV_DATA = 1,        /* bytes read from or written to a connection */
    SP_EV_WRITE_RESULT = 2,/* a write returned something other than what it was asked */
    SP_EV_CONN_OPEN = 3,   /* accept/connect succeeded, or an existing socket spoke HTTP */
    SP_EV_CONN_CLOSE = 4,  /* close() of a tracked connection */
    SP_EV_CONN_PORTS = 5,  /* a client socket reached ESTABLISHED: its own port is known */
    SP_EV_PROC_EXEC = 6,
    SP_EV_PROC_FORK = 7,
    SP_EV_PROC_EXIT = 8,
    SP_EV_CONN_ADDR = 9,   /* getpeername/getsockname on a tracked connection: an address
                              accept() was not asked for (libuv passes no sockaddr) */
};

enum sp_direction {
    SP_DIR_INGRESS = 0,    /* read/recv: bytes the process received */
    SP_DIR_EGRESS = 1,     /* write/send: bytes the process sent */
};

enum sp_role {
    SP_ROLE_UNKNOWN = 0,
    SP_ROLE_SERVER = 1,    /* accepted */
    SP_ROLE_CLIENT = 2,    /* connected */
};

enum sp_data_flags {
    SP_DATA_AT_ENTRY = 1,  /* egress recorded at syscall entry: `len` is what was asked */
    SP_DATA_VECTOR = 2,    /* one iovec of a vectored call; a WRITE_RESULT follows */
    SP_DATA_FAULT = 4,     /* the user buffer could not be read */
    SP_DATA_RESUMED = 8,   /* the connection was shed before this record (a CPU budget):
                              whole exchanges were left out, on purpose, and counted */
};

enum sp_open_flags {
    SP_OPEN_EXIT_ONLY = 1, /* accept() returned with its entry unseen (entered before the
                              agent attached or the process was selected): the listening
                              socket and the peer are unknown, the agent reads the ends */
};

/* Counters the kernel side keeps: one slot each of an array the agent reads through
 * mmap(2), never through a bpf(2) map lookup (see `counters` in spanprobe.bpf.c). */
enum sp_counter {
    SP_CNT_EVENTS_LOST = 0,      /* ring/perf buffer full */
    SP_CNT_READ_FAULTS = 1,      /* bpf_probe_read_user failed */
    SP_CNT_ACTIVE_FULL = 2,      /* in-flight syscall map full */
    SP_CNT_CONN_FULL = 3,        /* connection map update failed */
    SP_CNT_IOV_TRUNCATED = 4,    /* vectored call with more than SP_MAX_IOV buffers */
    SP_CNT_NON_HTTP = 5,         /* connections classified as not HTTP */
    SP_CNT_ACCEPTED_FULL = 6,    /* accepted-connection address map full: no local address */
    SP_CNT_CONNS_SHED = 7,       /* connections shed at a request boundary (a CPU budget) */
    SP_CNT_REQUESTS_SHED = 8,    /* request starts not sent: their connection was shed */
    SP_CNT_MAX = 9,
};

/* Settings the agent writes through mmap(2) of the `control` array, one u64 slot each:
 * no bpf(2) map update, so nothing the kernel side runs is skipped meanwhile. */
enum sp_control {
    SP_CTL_SHED_PERMILLE = 0,    /* thousandths of connections to shed (0 = trace all) */
    SP_CTL_BUDGET = 1,           /* 1 = a CPU budget is set: decisions are kept per thread */
    SP_CTL_MAX = 2,
};

struct sp_header {
    __u64 ts_ns;       /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    __u32 kind;        /* enum sp_kind */
    __u32 tgid;
    __u32 tid;
    __s32 fd;
    __u64 conn_id;     /* identifies one connection of (tgid, fd): its open time */
};

struct sp_data_event {
    struct sp_header h;
    __s64 len;         /* bytes transferred (ingress) or asked to send (egress) */
    __u32 captured;    /* bytes of buf that are valid */
    __u8 direction;    /* enum sp_direction */
    __u8 flags;        /* enum sp_data_flags */
    __u16 iov_index;
    __s32 owner_fd;    /* Python asyncio: the server connection whose task made this
                          call (-1 unknown); see spanprobe/pyruntime.py */
    __u32 lost;        /* data of this connection the kernel side failed to send so far
                          (buffer full, unreadable iovec or msghdr, in-flight map full):
                          a value that changed since the connection's last event is a gap */
    __u8 tail[SP_TAIL_BYTES]; /* last bytes of the buffer when not all was captured */
    __u8 buf[SP_BUF_SIZE];    /* only `captured` bytes are sent */
};

struct sp_write_result_event {
    struct sp_header h;
    __s64 ret;         /* what the write returned */
    __s64 asked;       /* what was asked (sum of the recorded iovecs for vectored calls) */
};

struct sp_conn_event {
    struct sp_header h;
    __s32 listen_fd;   /* accepting socket, -1 for clients */
    __u16 family;      /* AF_INET, AF_INET6, AF_UNIX */
    __u8 role;         /* enum sp_role */
    __u8 flags;        /* enum sp_open_flags */
    __u16 peer_port;   /* host byte order */
    __u16 local_port;  /* host byte order, 0 when unknown */
    __u32 pad;
    __u8 peer_addr[16];  /* IPv4 in the first 4 bytes */
    __u8 local_addr[16];
};

struct sp_proc_event {
    struct sp_header h;
    __u32 ppid;        /* parent for forks */
    __u32 pad;
    char comm[16];
    char filename[SP_PATH_BYTES]; /* exec: the program run, so a process that is gone
                                    before the agent reads /proc still has a name */
};

#endif
