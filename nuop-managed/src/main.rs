//! `nuop-managed`: not implemented yet. It exits with an error rather than pretending to
//! run, so a deployment of it fails loudly.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("nuop-managed is not implemented yet; use nuop-standard");
    ExitCode::FAILURE
}
