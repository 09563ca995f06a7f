// The one launcher of the host emulation: runs the registered entry point `name` (see KD_ENTRY in
// common.cuh) on a grid, with the kernel's argument block, as cuLaunchKernel would, under the checks of
// checks.h. build.rs compiles every kernels/*.cu with KD_EMULATE next to this file, so a new kernel file needs
// no launcher of its own.
#include "cuda_emulation.h"
#include "params.h"

namespace kd_emu {

std::vector<Buffer>& registered_buffers() {
    static thread_local std::vector<Buffer> buffers;
    return buffers;
}

namespace {

constexpr size_t kRedZone = 256;  // between the copies: a small overrun lands in no buffer

size_t round_up(size_t v, size_t to) { return (v + to - 1) / to * to; }

// The registered buffer holding host address `v` (its end included: a pointer one past a buffer is legal).
Buffer* holding(uintptr_t v) {
    Buffer* at_end = nullptr;
    for (Buffer& b : registered_buffers()) {
        if (v >= b.host && v < b.host + b.bytes) return &b;
        if (v == b.host + b.bytes) at_end = &b;
    }
    return at_end;
}

struct Mapping {
    void* base = MAP_FAILED;
    size_t bytes = 0;
    explicit Mapping(size_t n) : bytes(std::max<size_t>(n, 4096)) {
        base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base == MAP_FAILED) fail("mmap of the emulated device memory failed");
    }
    ~Mapping() { munmap(base, bytes); }
    unsigned char* data() const { return static_cast<unsigned char*>(base); }
};

// Runs the launch: copies the registered buffers into the global arena (keeping each one's address modulo 256,
// so that the kernels take the same aligned or unaligned paths as on the host's buffers), rewrites the
// argument block's addresses, runs the grid, copies the writable buffers back.
void run(const std::string& name, const Entry& entry, unsigned grid, unsigned resident, size_t dynamic_smem,
         size_t shared_limit, const void* args, LaunchState& state) {
    std::vector<Buffer>& buffers = registered_buffers();
    size_t arena_bytes = kRedZone;
    for (const Buffer& b : buffers) arena_bytes = round_up(arena_bytes, 256) + 256 + b.bytes + kRedZone;
    Mapping arena(arena_bytes);
    size_t cursor = kRedZone;
    for (Buffer& b : buffers) {
        b.device = reinterpret_cast<uintptr_t>(arena.data()) + round_up(cursor, 256) + b.host % 256;
        std::memcpy(reinterpret_cast<void*>(b.device), reinterpret_cast<const void*>(b.host), b.bytes);
        cursor = b.device - reinterpret_cast<uintptr_t>(arena.data()) + b.bytes + kRedZone;
        state.buffers.push_back(&b);
    }
    std::sort(state.buffers.begin(), state.buffers.end(), [](const Buffer* x, const Buffer* y) { return x->device < y->device; });

    std::vector<uint64_t> block((entry.args_bytes + 7) / 8);
    std::memcpy(block.data(), args, entry.args_bytes);
    for (size_t w = 0; w < entry.address_words; ++w) {
        const uint64_t v = block[w];
        if (v < 65536) continue;  // null, or the dangling address Rust gives an empty slice: never dereferenced
        const Buffer* b = holding(v);
        if (b == nullptr) {
            report("memcheck: argument word " + std::to_string(w) + " holds an address in no registered buffer "
                   "(each buffer a kernel reads must be registered with the emulator, src/emulator/checks.rs)");
            return;
        }
        block[w] = b->device + (v - b->host);
    }

    const unsigned slots = std::max(1u, std::min(resident, grid));
    const size_t slot_bytes = round_up(BlockContext::kStaticShared + dynamic_smem, 4096);
    Mapping shared(slots * slot_bytes);
    global_lo = reinterpret_cast<uintptr_t>(arena.data());
    global_size = arena.bytes;
    shared_lo = reinterpret_cast<uintptr_t>(shared.data());
    shared_size = shared.bytes;
    const std::function<void()> kernel = [&] { entry.run(block.data()); };
    const uint64_t seed = schedule_seed() ^ std::hash<std::string>{}(name);
    std::vector<std::thread> threads;
    threads.reserve(slots);
    for (unsigned s = 0; s < slots; ++s) {
        threads.emplace_back([&, s] {
            BlockContext slot(KD_BLOCK_THREADS, shared.data() + s * slot_bytes, dynamic_smem, shared_limit, &kernel);
            context = &slot;
            for (unsigned b = s; b < grid && !state.failed.load(std::memory_order_relaxed); b += slots) {
                run_block(slot, b, seed);
            }
            context = nullptr;
        });
    }
    for (auto& t : threads) t.join();
    global_lo = global_size = shared_lo = shared_size = 0;
    for (Buffer& b : buffers) {
        if (b.kind != BufferKind::input) {
            std::memcpy(reinterpret_cast<void*>(b.host), reinterpret_cast<const void*>(b.device), b.bytes);
        }
        b.device = 0;
    }
}

}  // namespace
}  // namespace kd_emu

// Registers a host buffer of the calling thread's call under `name` (see checks.h); `kind` is a BufferKind.
extern "C" void kd_emu_register(const char* name, uint64_t host, size_t bytes, int kind) {
    kd_emu::Buffer b;
    b.name = name;
    b.host = host;
    b.bytes = bytes;
    b.kind = static_cast<kd_emu::BufferKind>(kind);
    if (b.kind == kd_emu::BufferKind::workspace) b.written.assign(bytes, 0);
    kd_emu::registered_buffers().push_back(std::move(b));
}

// Forgets the calling thread's registered buffer at `host`.
extern "C" void kd_emu_unregister(uint64_t host) {
    std::vector<kd_emu::Buffer>& buffers = kd_emu::registered_buffers();
    std::erase_if(buffers, [&](const kd_emu::Buffer& b) { return b.host == host; });
}

// Runs the launch. Returns 0; -1 when no entry point of that name was compiled in; 1 when a check failed, its
// message (NUL-terminated, cut to fit) in `error`.
extern "C" int kd_emu_launch(const char* name, unsigned grid, unsigned resident, unsigned dynamic_smem,
                             unsigned shared_limit, const void* args, char* error, size_t error_len) {
    const auto found = kd_emu::registry().find(name);
    if (found == kd_emu::registry().end()) return -1;
    // One launch at a time in the whole process: gridDim, blockDim and the checks' state are process-wide,
    // and the test harness calls from several threads.
    static std::mutex launch_mutex;
    const std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex);
    kd_emu::LaunchState state;
    state.kernel = name;
    gridDim = dim3{grid, 1, 1};
    blockDim = dim3{KD_BLOCK_THREADS, 1, 1};
    kd_emu::launch_state = &state;
    if (dynamic_smem > shared_limit) {
        kd_emu::report("dynamic shared memory of " + std::to_string(dynamic_smem) +
                       " bytes exceeds the per-block limit of " + std::to_string(shared_limit) + " bytes");
    } else {
        kd_emu::run(name, found->second, grid, resident, dynamic_smem, shared_limit, args, state);
    }
    kd_emu::launch_state = nullptr;
    if (!state.failed.load()) return 0;
    if (error_len > 0) {
        const size_t n = std::min(error_len - 1, state.error.size());
        std::memcpy(error, state.error.data(), n);
        error[n] = '\0';
    }
    return 1;
}
