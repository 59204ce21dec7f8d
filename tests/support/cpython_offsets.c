/* Prints the CPython struct offsets that agent/spanprobe/cpython_layouts.py tabulates,
 * for the headers it is compiled against (x86_64, non-debug build):
 *   gcc -std=c11 -w -I<include>/python3.X [-I<dir holding x86_64-linux-gnu/python3.X>] \
 *       [-DSP_DEBUG_OFFSETS (3.13+)] [-DSP_FREE_THREADED_FIELD (3.14+)] cpython_offsets.c
 */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"

#define SHOW(label, type, field) printf("%s %zu\n", label, offsetof(type, field))

int main(void)
{
    SHOW("runtime_interpreters_head", _PyRuntimeState, interpreters.head);
    SHOW("interp_threads_head", PyInterpreterState, threads.head);
    SHOW("thread_next", PyThreadState, next);
    SHOW("thread_interp", PyThreadState, interp);
    SHOW("thread_native_thread_id", PyThreadState, native_thread_id);
    SHOW("thread_context", PyThreadState, context);
    SHOW("ob_type", PyObject, ob_type);
#ifdef SP_DEBUG_OFFSETS
    printf("debug.size %zu\n", sizeof(_Py_DebugOffsets));
    printf("debug.at_runtime_start %d\n", offsetof(_PyRuntimeState, debug_offsets) == 0);
#ifdef SP_FREE_THREADED_FIELD
    SHOW("debug.free_threaded", _Py_DebugOffsets, free_threaded);
#endif
    SHOW("debug.runtime_interpreters_head", _Py_DebugOffsets, runtime_state.interpreters_head);
    SHOW("debug.interp_threads_head", _Py_DebugOffsets, interpreter_state.threads_head);
    SHOW("debug.thread_next", _Py_DebugOffsets, thread_state.next);
    SHOW("debug.thread_interp", _Py_DebugOffsets, thread_state.interp);
    SHOW("debug.thread_native_thread_id", _Py_DebugOffsets, thread_state.native_thread_id);
#endif
    return 0;
}
