//! The `eventfold` binary: parse the command line and run it.

fn main() -> std::process::ExitCode {
    eventfold::cli::main()
}
