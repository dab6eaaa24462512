// A CPU stand-in for the CUDA driver API and NVRTC, for testing the CUDA backend on machines without a GPU
// (CI, the developer machine). Built as one shared library (scripts/build-cuda-emulator.sh) and loaded by the
// backend in place of libcuda.so.1 and libnvrtc.so through KTRANSFORMERS_CUDA_DRIVER / KTRANSFORMERS_NVRTC.
//
// "Device" memory is host memory. NVRTC's compile runs g++ on the kernel source with emu_prelude.h in front;
// the "CUBIN" is the path of the resulting shared object. A launch runs the grid's blocks one after another on
// the calling thread, each block's threads as fibers (ucontext) that switch at __syncthreads() and at the warp
// shuffles, so the kernels' synchronisation is exercised as written. Streams are synchronous; graph capture
// records launches (with copies of their arguments), copies to and from pinned host memory (copies with pageable
// memory are refused, as CUDA refuses them) and host functions, and replays them in order. Only correctness is
// emulated, not speed.
#include <ucontext.h>
#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sched.h>
#include <chrono>
#include <cmath>
#include "emu_half.h"
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <regex>
#include <sstream>
#include <string>
#include <vector>
#include <map>

#ifndef EMU_PRELUDE
#error "build with -DEMU_PRELUDE=\"/path/emu_prelude.h\""
#endif

struct emu_dim3 { unsigned x, y, z; };
struct emu_fiber_info { emu_dim3 tid; int linear; };

extern "C" {
emu_fiber_info* emu_current = nullptr;
emu_dim3 emu_block_idx, emu_block_dim, emu_grid_dim;
void* emu_dynamic_shared = nullptr;
}

// Fiber switches: a minimal x86-64 context switch (callee-saved registers and the stack pointer; no signal-mask
// system call, unlike swapcontext), ucontext elsewhere.
#if defined(__x86_64__)
extern "C" void emu_switch(void** save, void* load);
asm(R"(
.text
.globl emu_switch
.type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size emu_switch, .-emu_switch
)");
#define EMU_FAST_SWITCH 1
#endif

namespace {
enum State { READY, AT_BLOCK, AT_WARP, DONE };
struct Fiber {
    ucontext_t ctx;
    void* sp = nullptr;
    emu_fiber_info info;
    State state;
    char* stack = nullptr;
};
constexpr size_t kStack = 256 * 1024;
ucontext_t schedulerContext;
void* schedulerSp = nullptr;
std::vector<Fiber> fibers;
int currentFiber = -1;
void (*currentKernel)(void**) = nullptr;
void** currentArgs = nullptr;
uint64_t exchange[1024];
std::vector<char> sharedBuffer;
std::recursive_mutex launchLock;

void fiberEntry() {
    currentKernel(currentArgs);
    fibers[currentFiber].state = DONE;
#ifdef EMU_FAST_SWITCH
    emu_switch(&fibers[currentFiber].sp, schedulerSp);  // never comes back
    abort();
#endif
}

void startFiber(Fiber& f) {
#ifdef EMU_FAST_SWITCH
    // The initial stack: six zero registers for emu_switch to pop, then fiberEntry as its return address, at a
    // 16-byte aligned slot (so fiberEntry starts as if called).
    uintptr_t top = ((uintptr_t)(f.stack + kStack) & ~(uintptr_t)15) - 64;
    void** sp = (void**)top;
    sp[6] = (void*)&fiberEntry;
    for (int i = 0; i < 6; i++) sp[i] = nullptr;
    f.sp = sp;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &schedulerContext;
    makecontext(&f.ctx, fiberEntry, 0);
#endif
}

void resume(Fiber& f) {
#ifdef EMU_FAST_SWITCH
    emu_switch(&schedulerSp, f.sp);
#else
    swapcontext(&schedulerContext, &f.ctx);
#endif
}

void yieldToScheduler(Fiber& f) {
#ifdef EMU_FAST_SWITCH
    emu_switch(&f.sp, schedulerSp);
#else
    swapcontext(&f.ctx, &schedulerContext);
#endif
}

void runBlock(unsigned threads) {
    if (fibers.size() < threads) fibers.resize(threads);
    for (unsigned i = 0; i < threads; i++) {
        Fiber& f = fibers[i];
        if (!f.stack) f.stack = (char*)malloc(kStack);
        startFiber(f);
        unsigned bx = emu_block_dim.x, by = emu_block_dim.y;
        f.info.tid = {i % bx, (i / bx) % by, i / (bx * by)};
        f.info.linear = (int)i;
        f.state = READY;
    }
    for (;;) {
        bool any = false;
        for (unsigned i = 0; i < threads; i++) {
            if (fibers[i].state != READY) continue;
            any = true;
            currentFiber = (int)i;
            emu_current = &fibers[i].info;
            resume(fibers[i]);
        }
        (void)any;
        bool allDone = true, released = false;
        for (unsigned w = 0; w < threads; w += 32) {
            unsigned end = std::min(threads, w + 32);
            bool live = false, all = true;
            for (unsigned i = w; i < end; i++) {
                if (fibers[i].state == DONE) continue;
                live = true;
                if (fibers[i].state != AT_WARP) all = false;
            }
            if (live && all) {
                for (unsigned i = w; i < end; i++) if (fibers[i].state == AT_WARP) fibers[i].state = READY;
                released = true;
            }
        }
        bool liveAny = false, allBlock = true;
        for (unsigned i = 0; i < threads; i++) {
            if (fibers[i].state == DONE) continue;
            allDone = false;
            liveAny = true;
            if (fibers[i].state != AT_BLOCK) allBlock = false;
        }
        if (allDone) break;
        if (liveAny && allBlock) {
            for (unsigned i = 0; i < threads; i++) if (fibers[i].state == AT_BLOCK) fibers[i].state = READY;
            released = true;
        }
        if (!released) {
            bool ready = false;
            for (unsigned i = 0; i < threads; i++) if (fibers[i].state == READY) ready = true;
            if (!ready) {
                fprintf(stderr, "cuda-emu: deadlock: threads wait at different barriers\n");
                abort();
            }
        }
    }
    emu_current = nullptr;
}

struct Function {
    void (*kernel)(void**);
    int (*argSizes)(size_t*);
    std::string name;
};

void launch(Function* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
            unsigned shared, void** args) {
    std::lock_guard<std::recursive_mutex> guard(launchLock);
    if (gy > 65535 || gz > 65535) { fprintf(stderr, "cuda-emu: %s: grid y/z %u/%u above 65535\n", f->name.c_str(), gy, gz); abort(); }
    unsigned threads = bx * by * bz;
    if (threads == 0 || threads > 1024) { fprintf(stderr, "cuda-emu: %s: bad block size %u\n", f->name.c_str(), threads); abort(); }
    if (sharedBuffer.size() < shared + 16) sharedBuffer.resize(shared + 16);
    emu_dynamic_shared = sharedBuffer.data();
    emu_grid_dim = {gx, gy, gz};
    emu_block_dim = {bx, by, bz};
    currentKernel = f->kernel;
    currentArgs = args;
    for (unsigned z = 0; z < gz; z++)
        for (unsigned y = 0; y < gy; y++)
            for (unsigned x = 0; x < gx; x++) {
                emu_block_idx = {x, y, z};
                runBlock(threads);
            }
}

typedef void (*HostFn)(void*);
// A node of a captured graph: a kernel launch, an asynchronous copy (between device memory and pinned host
// memory, as CUDA allows in a capture) or a host function.
struct Gemm {
    int ta, tb, m, n, k, at, bt, ct, lda, ldb, ldc;
    float alpha, beta;
    const void *A, *B;
    void* C;
};
void runGemm(const Gemm& g);
struct Launch {
    enum Kind { KERNEL, COPY, HOST, GEMM, WRITE32, WAIT32 } kind = KERNEL;
    Gemm gemm{};
    Function* f = nullptr;
    unsigned g[3] = {}, b[3] = {}, shared = 0;
    std::vector<std::vector<char>> args;
    void* dst = nullptr;
    const void* src = nullptr;
    size_t bytes = 0;
    HostFn fn = nullptr;
    void* data = nullptr;
    uint32_t value = 0;  // WRITE32 / WAIT32: the word at dst
};
struct Graph { std::vector<Launch> launches; };
// Pinned host allocations (cuMemAllocHost): only these may be copied to or from inside a capture.
std::map<uintptr_t, size_t> pinned;
bool isPinned(const void* p, size_t n) {
    std::lock_guard<std::recursive_mutex> guard(launchLock);
    uintptr_t a = (uintptr_t)p;
    auto it = pinned.upper_bound(a);
    if (it == pinned.begin()) return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}
bool capturing = false;
Graph* captureGraph = nullptr;

// Streams: a copy to the device from pinned memory is truly asynchronous on a GPU, so the emulator defers it until
// its stream's next operation, a wait on an event recorded after it (cuStreamWaitEvent / cuEventSynchronize), or a
// synchronization; everything else runs at once, in issue order. A kernel on another stream that reads the copy's
// destination without waiting for it then sees the old bytes, as it could on a GPU.
struct PendingCopy { void* dst; const void* src; size_t bytes; };
std::map<void*, std::vector<PendingCopy>> pendingCopies;  // by stream (nullptr: the legacy stream)
void flushStream(void* s) {
    std::lock_guard<std::recursive_mutex> guard(launchLock);  // tensor-parallel shards drive their streams from threads of their own
    auto it = pendingCopies.find(s);
    if (it == pendingCopies.end()) return;
    std::vector<PendingCopy> ops;
    ops.swap(it->second);
    for (auto& c : ops) memcpy(c.dst, c.src, c.bytes);
}
void flushAll() { std::lock_guard<std::recursive_mutex> guard(launchLock); for (auto& kv : pendingCopies) flushStream(kv.first); }
struct Event { double time = 0; void* stream = nullptr; };

static float emuElement(const void* p, int type, size_t i) {
    return type == 2 ? kt_half_to_float(((const uint16_t*)p)[i]) : ((const float*)p)[i];
}
void runGemm(const Gemm& g) {
    for (int j = 0; j < g.n; j++)
        for (int i = 0; i < g.m; i++) {
            double s = 0;
            for (int l = 0; l < g.k; l++) {
                float a = emuElement(g.A, g.at, g.ta ? (size_t)l + (size_t)i * g.lda : (size_t)i + (size_t)l * g.lda);
                float b = emuElement(g.B, g.bt, g.tb ? (size_t)j + (size_t)l * g.ldb : (size_t)l + (size_t)j * g.ldb);
                s += (double)a * b;
            }
            float* c = (float*)g.C + (size_t)i + (size_t)j * g.ldc;
            *c = g.alpha * (float)s + (g.beta != 0 ? g.beta * *c : 0.0f);
        }
}
double now() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}
}  // namespace

extern "C" {
void emu_barrier(int warpOnly) {
    Fiber& f = fibers[currentFiber];
    f.state = warpOnly ? AT_WARP : AT_BLOCK;
    yieldToScheduler(f);
}
uint64_t* emu_exchange_slots() { return exchange; }

// MARK: driver API
typedef int CUresult;
int cuInit(unsigned) { return 0; }
int cuDriverGetVersion(int* v) { *v = 13000; return 0; }
int cuDeviceGetCount(int* n) { *n = 1; return 0; }
int cuDeviceGet(int* d, int i) { if (i != 0) return 101; *d = 0; return 0; }
int cuDeviceGetName(char* name, int len, int) { snprintf(name, len, "CUDA emulator (CPU)"); return 0; }
int cuDeviceTotalMem_v2(size_t* b, int) { *b = (size_t)16 << 30; return 0; }
int cuDeviceGetAttribute(int* v, int attr, int) {
    switch (attr) {
    case 75: *v = 9; break;          // compute capability major
    case 76: *v = 0; break;          // minor
    case 16: *v = 4; break;          // multiprocessors
    case 10: *v = 32; break;         // warp size
    case 1: *v = 1024; break;        // max threads per block
    case 8: *v = 48 * 1024; break;   // shared memory per block
    case 97: *v = 227 * 1024; break; // opt-in shared memory per block
    default: *v = 0;
    }
    return 0;
}
int cuDevicePrimaryCtxRetain(void** ctx, int) { static int c; *ctx = &c; return 0; }
static thread_local void* emuCurrentCtx = nullptr;
int cuCtxSetCurrent(void* c) { emuCurrentCtx = c; return 0; }
int cuCtxGetCurrent(void** c) { *c = emuCurrentCtx; return 0; }
int cuCtxSynchronize();
int cuMemGetInfo_v2(size_t* freeBytes, size_t* total) { *freeBytes = (size_t)15 << 30; *total = (size_t)16 << 30; return 0; }
int cuMemAlloc_v2(uint64_t* p, size_t bytes) {
    void* m = aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!m) return 2;
    memset(m, 0xA5, bytes);  // device memory is not zeroed: make a missing clear visible
    *p = (uint64_t)(uintptr_t)m;
    return 0;
}
int cuMemFree_v2(uint64_t p) { free((void*)(uintptr_t)p); return 0; }
int cuMemAllocHost_v2(void** p, size_t bytes) {
    *p = aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!*p) return 2;
    std::lock_guard<std::recursive_mutex> guard(launchLock);
    pinned[(uintptr_t)*p] = bytes;
    return 0;
}
int cuMemFreeHost(void* p) { std::lock_guard<std::recursive_mutex> guard(launchLock); flushAll(); pinned.erase((uintptr_t)p); free(p); return 0; }
int cuMemcpyHtoD_v2(uint64_t d, const void* s, size_t n) { flushAll(); memcpy((void*)(uintptr_t)d, s, n); return 0; }
int cuMemcpyDtoH_v2(void* d, uint64_t s, size_t n) { flushAll(); memcpy(d, (void*)(uintptr_t)s, n); return 0; }
// Inside a capture, a copy from or to pageable host memory is refused (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
// one with pinned memory becomes a copy node.
static int captureCopy(void* d, const void* s, size_t n, const void* host) {
    if (!isPinned(host, n)) return 900;
    Launch l;
    l.kind = Launch::COPY;
    l.dst = d;
    l.src = s;
    l.bytes = n;
    captureGraph->launches.push_back(std::move(l));
    return 0;
}
int cuMemcpyHtoDAsync_v2(uint64_t d, const void* s, size_t n, void* stream) {
    if (capturing) return captureCopy((void*)(uintptr_t)d, s, n, s);
    flushStream(stream);
    std::lock_guard<std::recursive_mutex> guard(launchLock);
    if (isPinned(s, n)) { pendingCopies[stream].push_back({(void*)(uintptr_t)d, s, n}); return 0; }
    memcpy((void*)(uintptr_t)d, s, n);
    return 0;
}
int cuMemcpyDtoHAsync_v2(void* d, uint64_t s, size_t n, void* stream) {
    if (capturing) return captureCopy(d, (const void*)(uintptr_t)s, n, d);
    flushStream(stream);
    memcpy(d, (void*)(uintptr_t)s, n);
    return 0;
}
int cuMemcpyDtoDAsync_v2(uint64_t d, uint64_t s, size_t n, void* stream) {
    flushStream(stream);
    memmove((void*)(uintptr_t)d, (void*)(uintptr_t)s, n);
    return 0;
}
int cuMemsetD32Async(uint64_t d, unsigned v, size_t n, void* stream) {
    flushStream(stream);
    unsigned* p = (unsigned*)(uintptr_t)d;
    for (size_t i = 0; i < n; i++) p[i] = v;
    return 0;
}
int cuMemsetD32_v2(uint64_t d, unsigned v, size_t n) { return cuMemsetD32Async(d, v, n, nullptr); }
int cuStreamCreate(void** s, unsigned) { *s = new int(0); return 0; }
int cuStreamDestroy_v2(void* s) { std::lock_guard<std::recursive_mutex> guard(launchLock); flushStream(s); pendingCopies.erase(s); delete (int*)s; return 0; }
int cuStreamSynchronize(void* s) {  // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED inside a capture
    if (capturing) return 900;
    flushStream(s);
    return 0;
}
int cuEventCreate(void** e, unsigned) { *e = new Event(); return 0; }
int cuEventDestroy_v2(void* e) { delete (Event*)e; return 0; }
int cuEventRecord(void* e, void* s) { ((Event*)e)->time = now(); ((Event*)e)->stream = s; return 0; }
int cuEventSynchronize(void* e) { flushStream(((Event*)e)->stream); return 0; }
int cuStreamWaitEvent(void* s, void* e, unsigned) {
    if (capturing) return 900;   // the backend never waits on another stream inside a capture
    flushStream(((Event*)e)->stream);
    flushStream(s);
    return 0;
}
int cuEventElapsedTime(float* ms, void* a, void* b) { *ms = (float)(((Event*)b)->time - ((Event*)a)->time); return 0; }
int cuFuncSetAttribute(void*, int, int) { return 0; }
// Occupancy: by shared memory alone (the emulator has no registers), at most 2048 threads a multiprocessor.
int cuOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void*, int threads, size_t shared) {
    int byThreads = 2048 / (threads > 0 ? threads : 1);
    int byShared = shared > 0 ? (int)((227 * 1024) / shared) : byThreads;
    *n = byThreads < byShared ? byThreads : byShared;
    if (*n < 1) *n = 1;
    return 0;
}
int cuGetErrorString(int r, const char** s) {
    static char buf[64];
    snprintf(buf, sizeof buf, "emulated error %d", r);
    *s = buf;
    return 0;
}
int cuModuleLoadData(void** module, const void* image) {
    // The kernels refer to this library's globals (emu_current, ...): make its symbols global, as the backend
    // opened it RTLD_LOCAL.
    Dl_info self;
    if (dladdr((void*)&cuInit, &self) && self.dli_fname) dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL);
    void* h = dlopen((const char*)image, RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "cuda-emu: %s\n", dlerror()); return 200; }
    *module = h;
    return 0;
}
int cuModuleGetFunction(void** fn, void* module, const char* name) {
    std::string k = std::string("emu_kernel_") + name, a = std::string("emu_argsizes_") + name;
    void* kp = dlsym(module, k.c_str());
    void* ap = dlsym(module, a.c_str());
    if (!kp || !ap) return 500;  // CUDA_ERROR_NOT_FOUND
    *fn = new Function{(void (*)(void**))kp, (int (*)(size_t*))ap, name};
    return 0;
}
int cuCtxSynchronize() { flushAll(); return 0; }
int cuLaunchKernel(void* fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shared, void* stream, void** args, void**) {
    Function* f = (Function*)fn;
    if (!capturing) flushStream(stream);
    if (capturing) {
        Launch l;
        l.f = f;
        l.g[0] = gx; l.g[1] = gy; l.g[2] = gz;
        l.b[0] = bx; l.b[1] = by; l.b[2] = bz;
        l.shared = shared;
        size_t sizes[64];
        int n = f->argSizes(sizes);
        for (int i = 0; i < n; i++) l.args.emplace_back((char*)args[i], (char*)args[i] + sizes[i]);
        captureGraph->launches.push_back(std::move(l));
        return 0;
    }
    launch(f, gx, gy, gz, bx, by, bz, shared, args);
    return 0;
}
// cuLaunchKernelEx with CUlaunchConfig { 6 x unsigned grid/block dims, unsigned shared, CUstream, CUlaunchAttribute*,
// unsigned numAttrs } and attributes { CUlaunchAttributeID id; pad to 8; 64-byte value }: only programmatic stream
// serialization (id 6, an int in the value) is accepted; the emulator runs launches in order, so it changes nothing.
struct EmuLaunchAttribute { int id; int pad; int value[16]; };
struct EmuLaunchConfig { unsigned g[3], b[3], shared; void* stream; EmuLaunchAttribute* attrs; unsigned numAttrs; };
static_assert(sizeof(EmuLaunchAttribute) == 72, "CUlaunchAttribute is 72 bytes");
static_assert(sizeof(EmuLaunchConfig) == 56, "CUlaunchConfig is 56 bytes");
int emuDependentLaunches = 0;
int cuLaunchKernelEx(const EmuLaunchConfig* c, void* fn, void** args, void** extra) {
    for (unsigned i = 0; i < c->numAttrs; i++) {
        if (c->attrs[i].id != 6 || c->attrs[i].value[0] != 1) return 1;  // CUDA_ERROR_INVALID_VALUE
        emuDependentLaunches++;
    }
    return cuLaunchKernel(fn, c->g[0], c->g[1], c->g[2], c->b[0], c->b[1], c->b[2], c->shared, c->stream, args, extra);
}
int emuDependentLaunchCount() { return emuDependentLaunches; }
int cuStreamBeginCapture_v2(void*, int) { capturing = true; captureGraph = new Graph(); return 0; }
int cuStreamEndCapture(void*, void** graph) { capturing = false; *graph = captureGraph; captureGraph = nullptr; return 0; }
int cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) { *exec = new Graph(*(Graph*)graph); return 0; }
int cuGraphDestroy(void* g) { delete (Graph*)g; return 0; }
int cuGraphExecDestroy(void* g) { delete (Graph*)g; return 0; }
// Stream memory operations (V2): on the emulator the stream runs on the calling thread, so a wait spins there
// until another thread (the hybrid MoE's expert thread) writes the word; after 120 s it gives up with
// CUDA_ERROR_UNKNOWN (999) instead of hanging a test. Only page-locked host words are accepted (all the backend uses).
static void writeWord(void* p, uint32_t v) { __atomic_store_n((uint32_t*)p, v, __ATOMIC_SEQ_CST); }
static int waitWord(void* p, uint32_t v) {
    auto t0 = std::chrono::steady_clock::now();
    for (unsigned long i = 0; __atomic_load_n((uint32_t*)p, __ATOMIC_SEQ_CST) != v; i++) {
        if ((i & 1023) == 0) {
            sched_yield();
            if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(120)) return 999;
        }
    }
    return 0;
}
int cuMemHostGetDevicePointer_v2(uint64_t* d, void* p, unsigned) {
    if (!isPinned(p, 4)) return 1;  // CUDA_ERROR_INVALID_VALUE
    *d = (uint64_t)(uintptr_t)p;
    return 0;
}
static int memOp(void* stream, uint64_t addr, uint32_t value, unsigned flags, Launch::Kind kind) {
    void* p = (void*)(uintptr_t)addr;
    if (!isPinned(p, 4)) return 1;
    if (kind == Launch::WAIT32 && flags != 1) return 1;  // only CU_STREAM_WAIT_VALUE_EQ
    if (capturing) {
        Launch l;
        l.kind = kind;
        l.dst = p;
        l.value = value;
        captureGraph->launches.push_back(std::move(l));
        return 0;
    }
    flushStream(stream);
    if (kind == Launch::WRITE32) { writeWord(p, value); return 0; }
    return waitWord(p, value);
}
int cuStreamWriteValue32_v2(void* stream, uint64_t addr, uint32_t value, unsigned flags) {
    return memOp(stream, addr, value, flags, Launch::WRITE32);
}
int cuStreamWaitValue32_v2(void* stream, uint64_t addr, uint32_t value, unsigned flags) {
    return memOp(stream, addr, value, flags, Launch::WAIT32);
}
int cuGraphLaunch(void* exec, void* stream) {
    flushStream(stream);
    for (auto& l : ((Graph*)exec)->launches) {
        if (l.kind == Launch::COPY) { memcpy(l.dst, l.src, l.bytes); continue; }
        if (l.kind == Launch::HOST) { l.fn(l.data); continue; }
        if (l.kind == Launch::WRITE32) { writeWord(l.dst, l.value); continue; }
        if (l.kind == Launch::WAIT32) { if (int r = waitWord(l.dst, l.value)) return r; continue; }
        if (l.kind == Launch::GEMM) { runGemm(l.gemm); continue; }
        std::vector<void*> ptrs;
        for (auto& a : l.args) ptrs.push_back(a.data());
        launch(l.f, l.g[0], l.g[1], l.g[2], l.b[0], l.b[1], l.b[2], l.shared, ptrs.data());
    }
    return 0;
}
int cuLaunchHostFunc(void* stream, HostFn fn, void* data) {
    if (!capturing) flushStream(stream);
    if (capturing) {
        Launch l;
        l.kind = Launch::HOST;
        l.fn = fn;
        l.data = data;
        captureGraph->launches.push_back(std::move(l));
        return 0;
    }
    fn(data);
    return 0;
}

// MARK: cuBLAS (the GEMM the backend uses: f16 or f32 operands, f32 result, column-major as cuBLAS)
int cublasCreate_v2(void** h) { *h = new int(0); return 0; }
int cublasDestroy_v2(void* h) { delete (int*)h; return 0; }
int cublasSetStream_v2(void*, void*) { return 0; }
int cublasSetWorkspace_v2(void*, void*, size_t) { return 0; }
int cublasGetVersion_v2(void*, int* v) { *v = 130000; return 0; }
int cublasGemmEx(void*, int ta, int tb, int m, int n, int k, const void* alpha, const void* A, int at, int lda,
                 const void* B, int bt, int ldb, const void* beta, void* C, int ct, int ldc, int compute, int) {
    // Only what the backend asks for: f16 / f32 inputs (CUDA_R_16F 2, CUDA_R_32F 0), f32 output, f32 compute (68).
    if ((at != 2 && at != 0) || (bt != 2 && bt != 0) || ct != 0 || compute != 68) return 15;  // NOT_SUPPORTED
    if (m < 0 || n < 0 || k < 0 || lda < (ta ? k : m) || ldb < (tb ? n : k) || ldc < m) return 7;  // INVALID_VALUE
    Gemm g{ta, tb, m, n, k, at, bt, ct, lda, ldb, ldc, *(const float*)alpha, *(const float*)beta, A, B, C};
    if (capturing) {
        Launch l;
        l.kind = Launch::GEMM;
        l.gemm = g;
        captureGraph->launches.push_back(std::move(l));
        return 0;
    }
    flushAll();
    runGemm(g);
    return 0;
}

// MARK: NVRTC
struct Program { std::string source, name, log, image; };
int nvrtcVersion(int* major, int* minor) { *major = 13; *minor = 0; return 0; }
int nvrtcCreateProgram(Program** p, const char* src, const char* name, int, const char* const*, const char* const*) {
    *p = new Program{src, name ? name : "kernel.cu", "", ""};
    return 0;
}
int nvrtcDestroyProgram(Program** p) { delete *p; *p = nullptr; return 0; }

static std::string readFile(const std::string& path) {
    std::ifstream f(path);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

int nvrtcCompileProgram(Program* p, int nOptions, const char* const* options) {
    // Options that change the source's meaning (-D...) are passed on; architecture flags are not.
    std::string defines;
    for (int i = 0; i < nOptions; i++) {
        std::string o = options[i];
        if (o.rfind("-D", 0) == 0) defines += " '" + o + "'";
    }
    std::string full = std::string("#include \"") + EMU_PRELUDE + "\"\n" + p->source + "\n";
    std::string here = EMU_PRELUDE;
    here = here.substr(0, here.rfind('/') + 1);  // emu_half.h sits beside the prelude, which includes it
    size_t hash = std::hash<std::string>()(readFile(EMU_PRELUDE) + readFile(here + "emu_half.h") + full + defines);
    const char* tmp = getenv("TMPDIR");
    std::string dir = std::string(tmp && *tmp ? tmp : "/tmp") + "/kt-cuda-emu";
    mkdir(dir.c_str(), 0700);
    char stem[64];
    snprintf(stem, sizeof stem, "/k%016zx", hash);
    std::string base = dir + stem, so = base + ".so";
    struct stat st;
    if (stat(so.c_str(), &st) == 0) { p->image = so; return 0; }
    std::string src = base + ".cpp", pre = base + ".i", log = base + ".log";
    { std::ofstream(src) << full; }
    const char* cxxEnv = getenv("CXX");
    std::string cxx = cxxEnv && *cxxEnv ? cxxEnv : "g++";
    std::string cmd = cxx + " -std=c++17 -E -P" + defines + " '" + src + "' -o '" + pre + "' > '" + log + "' 2>&1";
    if (system(cmd.c_str()) != 0) { p->log = readFile(log); return 6; }
    // Every kernel: `__attribute__((used)) void NAME(` after preprocessing (__global__ expands to it).
    std::string text = readFile(pre);
    std::regex kernel(R"(__attribute__\(\(used\)\)\s+void\s+(\w+)\s*\()");
    std::string reg;
    for (auto it = std::sregex_iterator(text.begin(), text.end(), kernel); it != std::sregex_iterator(); ++it)
        reg += "EMU_REGISTER(" + (*it)[1].str() + ")\n";
    { std::ofstream(src) << full << reg; }
    std::string tmpSo = base + ".tmp.so";
    cmd = cxx + " -std=c++17 -O1 -g0 -shared -fPIC -w" + defines + " '" + src + "' -o '" + tmpSo + "' > '" + log + "' 2>&1";
    if (system(cmd.c_str()) != 0) { p->log = readFile(log); return 6; }
    rename(tmpSo.c_str(), so.c_str());
    p->image = so;
    return 0;
}
int nvrtcGetProgramLogSize(Program* p, size_t* n) { *n = p->log.size() + 1; return 0; }
int nvrtcGetProgramLog(Program* p, char* out) { memcpy(out, p->log.c_str(), p->log.size() + 1); return 0; }
int nvrtcGetCUBINSize(Program* p, size_t* n) { *n = p->image.size() + 1; return 0; }
int nvrtcGetCUBIN(Program* p, char* out) { memcpy(out, p->image.c_str(), p->image.size() + 1); return 0; }
}
