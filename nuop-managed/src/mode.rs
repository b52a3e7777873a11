//! Which binary the managed image runs, from `NUOP_MODE` as the original nuop read it
//! (pure). The image's entry point is `nuop-managed`; without a managed configuration
//! and without `NUOP_MODE=managed` it is a standard operator over scripts baked into the
//! image (`/scripts`), so an image built `FROM` it with scripts added just works.

/// What the process should become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `nuop-managed`: sources and mappings from `--config`.
    Managed,
    /// `nuop-standard`: one controller per script under the scripts root.
    Standard,
}

/// Decides the mode. `nuop_mode` is `NUOP_MODE`; `has_config` says whether a managed
/// configuration was given (`--config`, `NUOP_CONFIG`) or is mounted at the default
/// path.
///
/// # Errors
/// When `NUOP_MODE=manager`: the manager has its own image.
pub fn decide(nuop_mode: Option<&str>, has_config: bool) -> Result<Mode, String> {
    match nuop_mode.map(str::trim) {
        Some("managed") => Ok(Mode::Managed),
        Some("manager") => Err(
            "NUOP_MODE=manager: this image runs nuop-managed and nuop-standard; the manager \
             has its own image (nuop-manager)"
                .into(),
        ),
        // Unset: what the pod was given decides.
        None | Some("") if has_config => Ok(Mode::Managed),
        // As in the original nuop, anything else is standard mode.
        _ => Ok(Mode::Standard),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nuop_mode_decides_as_the_original_did() {
        assert_eq!(decide(Some("managed"), false), Ok(Mode::Managed));
        assert_eq!(decide(Some("standard"), true), Ok(Mode::Standard));
        assert_eq!(decide(Some("anything"), false), Ok(Mode::Standard));
        assert!(decide(Some("manager"), true).is_err());
    }

    #[test]
    fn unset_mode_follows_the_configuration() {
        assert_eq!(decide(None, true), Ok(Mode::Managed));
        assert_eq!(decide(Some(""), true), Ok(Mode::Managed));
        assert_eq!(decide(None, false), Ok(Mode::Standard));
    }
}
