//! The `ferry` binary: parse the command line, set up logging, call the
//! library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
