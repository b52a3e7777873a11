//! Prints the `NuOperator` CRD as YAML on stdout (`make manifests` writes it to
//! `config/crd/bases/nuop.dev_nuoperators.yaml`).

use std::io::Write as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let yaml = nuop_crd::crd_yaml()?;
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(())
}
