//! The `padis` binary.

fn main() -> std::process::ExitCode {
    padis_control::cli::main()
}
