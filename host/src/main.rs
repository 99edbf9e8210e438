//! The `eventfold` binary: parse the command line and run it.

/// mimalloc, not the system allocator: the log writer frees every append
/// another thread allocated, which glibc makes costly (docs/benchmarks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    eventfold::cli::main()
}
