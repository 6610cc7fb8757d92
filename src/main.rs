fn main() -> std::process::ExitCode {
    webjobs::cli::main()
}
