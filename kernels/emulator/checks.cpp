// The checks of checks.h: the access hooks the instrumented kernels call, the shared-memory shadow, the
// reports. Compiled without the instrumentation (build.rs), or every hook would call itself.
#include <cinttypes>
#include <random>

#include "cuda_emulation.h"

namespace kd_emu {

namespace {

std::string hex(uintptr_t v) {
    char text[32];
    std::snprintf(text, sizeof text, "0x%" PRIxPTR, v);
    return text;
}

// The buffer whose copy holds [a, a + n), else null; `near` is the buffer nearest below a (for messages).
const Buffer* find_global(uintptr_t a, size_t n, const Buffer** near) {
    const std::vector<Buffer*>& buffers = launch_state->buffers;
    size_t lo = 0, hi = buffers.size();
    while (lo < hi) {  // the first buffer starting above a
        const size_t mid = (lo + hi) / 2;
        if (buffers[mid]->device <= a) lo = mid + 1; else hi = mid;
    }
    *near = lo == 0 ? (buffers.empty() ? nullptr : buffers[0]) : buffers[lo - 1];
    if (lo == 0) return nullptr;
    const Buffer* b = buffers[lo - 1];
    return a + n <= b->device + b->bytes ? b : nullptr;
}

const char* access_name(bool write) { return write ? "store" : "load"; }

void global_access(uintptr_t a, size_t n, bool write) {
    const Buffer* near = nullptr;
    const Buffer* b = find_global(a, n, &near);
    if (b == nullptr) {
        report_and_abandon(std::string("memcheck: out-of-bounds ") + access_name(write) + " of " + std::to_string(n) +
                           " bytes at " + describe(a));
        return;
    }
    const size_t offset = a - b->device;
    if (write && b->kind == BufferKind::input) {
        report_and_abandon(std::string("memcheck: store of ") + std::to_string(n) + " bytes to the input buffer '" +
                           b->name + "' at offset " + std::to_string(offset));
        return;
    }
    if (b->kind != BufferKind::workspace) return;
    uint8_t* written = const_cast<uint8_t*>(b->written.data()) + offset;
    for (size_t i = 0; i < n; ++i) {
        std::atomic_ref<uint8_t> w(written[i]);
        if (write) {
            w.store(1, std::memory_order_relaxed);
        } else if (w.load(std::memory_order_relaxed) == 0) {
            report_and_abandon("initcheck: load of " + std::to_string(n) + " bytes at offset " +
                               std::to_string(offset) + " of workspace buffer '" + b->name +
                               "' that no kernel of this call wrote");
            return;
        }
    }
}

void shared_access(uintptr_t a, size_t n, bool write) {
    BlockContext* b = context;
    if (b == nullptr) return;
    const uintptr_t base = reinterpret_cast<uintptr_t>(b->shared);
    const size_t offset = a - base;
    const size_t dynamic_at = BlockContext::kStaticShared;
    const bool in_static = offset + n <= b->static_used;
    const bool in_dynamic = offset >= dynamic_at && offset + n <= dynamic_at + b->dynamic_bytes;
    if (a < base || !(in_static || in_dynamic)) {
        report_and_abandon(std::string("memcheck: out-of-bounds ") + access_name(write) + " of " + std::to_string(n) +
                           " bytes at " + describe(a));
        return;
    }
    const uint16_t t = static_cast<uint16_t>(b->current);
    const uint32_t e = b->epoch;
    for (size_t i = 0; i < n; ++i) {
        ShadowCell& c = b->shadow[offset + i];
        const char* hazard = nullptr;
        unsigned other = 0;
        if (write) {
            if (c.write_epoch == e && c.writer != t) {
                hazard = "write-write", other = c.writer;
            } else if (c.read_epoch == e && c.reader != t) {
                hazard = "read-write", other = c.reader;
            }
            c.write_epoch = e;
            c.writer = t;
        } else {
            if (c.write_epoch < b->block_first_epoch) {
                report_and_abandon(std::string("initcheck: load of ") + std::to_string(n) + " bytes at " +
                                   describe(a) + " that no thread of this block wrote");
                return;
            }
            if (c.write_epoch == e && c.writer != t) hazard = "write-read", other = c.writer;
            if (c.read_epoch != e) {
                c.read_epoch = e;
                c.reader = t;
            } else if (c.reader != t) {
                c.reader = ShadowCell::kMany;
            }
        }
        if (hazard != nullptr) {
            const std::string who =
                other == ShadowCell::kMany ? std::string("other threads") : "thread " + std::to_string(other);
            report_and_abandon(std::string("racecheck: ") + hazard + " hazard on " + describe(a + i) + ": " +
                               access_name(write) + " by thread " + std::to_string(t) + " after an access by " + who +
                               " with no __syncthreads between them");
            return;
        }
    }
}

inline void on_access(uintptr_t a, size_t n, bool write) {
    if (a - global_lo < global_size) {
        global_access(a, n, write);
    } else if (a - shared_lo < shared_size) {
        shared_access(a, n, write);
    }
}

}  // namespace

std::string describe(uintptr_t a) {
    if (launch_state != nullptr && a - global_lo < global_size) {
        const Buffer* near = nullptr;
        const Buffer* b = find_global(a, 1, &near);
        if (b != nullptr) {
            return "offset " + std::to_string(a - b->device) + " of buffer '" + b->name + "' (" +
                   std::to_string(b->bytes) + " bytes)";
        }
        if (near != nullptr && a >= near->device) {
            return "offset " + std::to_string(a - near->device) + " of buffer '" + near->name + "' (" +
                   std::to_string(near->bytes) + " bytes), " + std::to_string(a - near->device - near->bytes) +
                   " bytes past its end";
        }
        if (near != nullptr) {
            return std::to_string(near->device - a) + " bytes before buffer '" + near->name + "' (" +
                   std::to_string(near->bytes) + " bytes)";
        }
    }
    if (context != nullptr) {
        const uintptr_t base = reinterpret_cast<uintptr_t>(context->shared);
        const size_t offset = a - base;
        if (a >= base && offset < BlockContext::kStaticShared) {
            for (const SharedVariable& v : context->static_variables) {
                if (offset >= v.offset && offset < v.offset + v.bytes) {
                    return "byte " + std::to_string(offset - v.offset) + " of shared variable '" + v.name + "' (" +
                           std::to_string(v.bytes) + " bytes)";
                }
            }
            return "static shared offset " + std::to_string(offset) + " (outside every declared variable)";
        }
        if (a >= base && offset - BlockContext::kStaticShared < BlockContext::kStaticShared + context->shared_limit) {
            return "byte " + std::to_string(offset - BlockContext::kStaticShared) + " of dynamic shared memory (" +
                   std::to_string(context->dynamic_bytes) + " bytes)";
        }
        if (a - shared_lo < shared_size) return "the shared memory of another block (" + hex(a) + ")";
    }
    return "address " + hex(a) + " (in no buffer of the launch)";
}

void report(const std::string& message) {
    LaunchState* s = launch_state;
    if (s == nullptr) fail(message.c_str());
    const std::lock_guard<std::mutex> lock(s->error_mutex);
    if (s->failed.load(std::memory_order_relaxed)) return;
    std::string where = "kernel " + s->kernel;
    if (context != nullptr) {
        where += ", block " + std::to_string(blockIdx.x) + ", thread " + std::to_string(context->current);
    }
    s->error = where + ": " + message + " (schedule seed " + std::to_string(schedule_seed()) +
               ": KD_EMU_SEED=" + std::to_string(schedule_seed()) + " reruns it)";
    s->failed.store(true, std::memory_order_relaxed);
}

void report_and_abandon(const std::string& message) {
    report(message);
    if (context != nullptr && context->live > 0) abandon_block();
}

void copy_unchecked(void* to, const void* from, size_t bytes) { std::memcpy(to, from, bytes); }

uint64_t schedule_seed() {
    static const uint64_t seed = [] {
        if (const char* text = std::getenv("KD_EMU_SEED"); text != nullptr && *text != '\0') {
            return static_cast<uint64_t>(std::strtoull(text, nullptr, 0));
        }
        std::random_device device;
        return (static_cast<uint64_t>(device()) << 32) ^ device();
    }();
    return seed;
}

bool mma_truncates() {
    static const bool truncates = [] {
        const char* text = std::getenv("KD_EMU_MMA");
        if (text == nullptr || std::strcmp(text, "truncate") == 0 || *text == '\0') return true;
        if (std::strcmp(text, "exact") == 0) return false;
        fail("KD_EMU_MMA must be `truncate` or `exact`");
    }();
    return truncates;
}

void check_alignment(const void* address, size_t align, const char* what) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(address);
    if (a % align != 0) {
        report_and_abandon(std::string("memcheck: misaligned ") + what + " at " + describe(a) + ": needs " +
                           std::to_string(align) + "-byte alignment");
    }
}

std::string describe_deadlock(const BlockContext& b) {
    // Group the threads by what they wait at, in thread order.
    std::vector<std::pair<std::string, std::vector<unsigned>>> groups;
    for (unsigned t = 0; t < b.threads; ++t) {
        std::string what = "exited";
        if (!b.done[t]) {
            const FiberBarrier* w = b.waiting[t];
            what = w == nullptr ? "running" : std::string(w->kind) + " (" + w->site.file_name() + ":" +
                                                  std::to_string(w->site.line()) + ")";
        }
        auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == what; });
        if (it == groups.end()) groups.push_back({what, {t}}); else it->second.push_back(t);
    }
    std::string text = "deadlock: the block's threads wait at barriers that cannot complete:";
    for (const auto& [what, threads] : groups) {
        text += " " + std::to_string(threads.size()) + " thread(s) from " + std::to_string(threads.front()) + " " +
                what + ";";
    }
    return text + " (a __syncthreads not reached by every thread, or a warp-collective call not reached by every lane)";
}

BlockContext::BlockContext(unsigned threads, unsigned char* shared_memory, size_t dynamic_shared_bytes,
                           size_t shared_limit, const std::function<void()>* kernel)
    : threads(threads), fibers(threads), shuffle_count(threads), done(threads), waiting(threads, nullptr),
      waiting_generation(threads), shared(shared_memory), dynamic_bytes(dynamic_shared_bytes),
      shared_limit(shared_limit), kernel(kernel) {
    stacks_bytes = threads * (kStack + kGuard);
    void* p = mmap(nullptr, stacks_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("mmap of the fiber stacks failed");
    stacks = static_cast<unsigned char*>(p);
    for (unsigned t = 0; t < threads; ++t) {
        if (mprotect(stacks + t * (kStack + kGuard), kGuard, PROT_NONE) != 0) fail("mprotect of a guard page failed");
    }
    block_barrier.expected = threads;
    for (unsigned first = 0; first < threads; first += 32) {
        FiberBarrier warp;
        warp.expected = std::min(32u, threads - first);
        warp_barriers.push_back(warp);
    }
    for (auto& set : shuffle_slots) set.resize(warp_barriers.size());
    mma_memo.resize(warp_barriers.size());
    // calloc: the pages of a large shadow stay untouched until used.
    shadow = static_cast<ShadowCell*>(std::calloc(kStaticShared + dynamic_shared_bytes, sizeof(ShadowCell)));
    if (shadow == nullptr) fail("allocation of the shared-memory shadow failed");
}

BlockContext::~BlockContext() {
    munmap(stacks, stacks_bytes);
    std::free(shadow);
}

void begin_block_shared(BlockContext& b) {
    std::memset(b.shared, 0xff, b.static_used);
    std::memset(b.shared + BlockContext::kStaticShared, 0xff, b.dynamic_bytes);
    b.epoch += 1;
    b.block_first_epoch = b.epoch;
}

void* static_shared(const void* site, const char* name, size_t bytes, size_t align) {
    BlockContext& b = *context;
    const auto found = b.static_offsets.find(site);
    if (found != b.static_offsets.end()) return b.shared + found->second;
    const size_t offset = (b.static_used + align - 1) / align * align;
    if (offset + bytes > BlockContext::kStaticShared) {
        report_and_abandon("static shared memory exceeds the 48 KiB limit at variable '" + std::string(name) + "'");
    }
    if (offset + bytes + b.dynamic_bytes > b.shared_limit) {
        report_and_abandon("static (" + std::to_string(offset + bytes) + " bytes, at variable '" + name +
                           "') plus dynamic (" + std::to_string(b.dynamic_bytes) +
                           " bytes) shared memory exceeds the per-block limit of " + std::to_string(b.shared_limit) +
                           " bytes");
    }
    b.static_offsets.emplace(site, offset);
    b.static_variables.push_back({name, offset, bytes});
    b.static_used = offset + bytes;
    std::memset(b.shared + offset, 0xff, bytes);  // the first block of the slot finds it poisoned too
    return b.shared + offset;
}

}  // namespace kd_emu

// The hooks of GCC's out-of-line address-sanitizer instrumentation (see checks.h).
extern "C" {
#define KD_EMU_HOOKS(n)                                                                                      \
    void __asan_load##n##_noabort(uintptr_t a) { kd_emu::on_access(a, n, false); }                           \
    void __asan_store##n##_noabort(uintptr_t a) { kd_emu::on_access(a, n, true); }
KD_EMU_HOOKS(1)
KD_EMU_HOOKS(2)
KD_EMU_HOOKS(4)
KD_EMU_HOOKS(8)
KD_EMU_HOOKS(16)
#undef KD_EMU_HOOKS
void __asan_loadN_noabort(uintptr_t a, size_t n) { kd_emu::on_access(a, n, false); }
void __asan_storeN_noabort(uintptr_t a, size_t n) { kd_emu::on_access(a, n, true); }
void __asan_handle_no_return() {}
// Static initialisation order checking (the entry points' registrations): nothing to check here.
void __asan_before_dynamic_init(const char*) {}
void __asan_after_dynamic_init() {}
}
