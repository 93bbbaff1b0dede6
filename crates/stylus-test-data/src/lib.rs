//! Test inputs that do not live in the repository: the shared data beside it (`../shared`:
//! Civitai dumps, Parti prompts, real LoRA files) and downloaded weights (all-MiniLM-L6-v2).
//!
//! A test asks for what it needs; when something is missing it is **skipped**: the helper writes
//! one line to the process's stderr (directly, so libtest's output capture does not swallow it)
//!
//! ```text
//! skipped: <test>: needs ../shared/data/civitai (clone the shared data beside the repository)
//! ```
//!
//! and the test returns early. With `STYLUS_REQUIRE_TEST_DATA=1` (CI sets it) a missing input
//! fails the test instead, so a CI run cannot pass with tests silently skipped.
//!
//! ```no_run
//! let Some(cards) = stylus_test_data::shared("data/civitai") else { return };
//! ```

pub mod hostile;

use std::io::Write;
use std::path::{Path, PathBuf};

/// Set to `1` to make missing test data a failure instead of a skip.
pub const REQUIRE_ENV: &str = "STYLUS_REQUIRE_TEST_DATA";

/// The shared data folder: `../shared` relative to the workspace root.
pub fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// Whether missing inputs fail tests ([`REQUIRE_ENV`] is `1`, `true` or `yes`).
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV)
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

/// One input a test needs: where it should be, what to call it, and how to get it.
#[derive(Debug, Clone)]
pub struct Need {
    path: Option<PathBuf>,
    what: String,
    how: String,
}

impl Need {
    /// `../shared/<relative>` (a file or a folder).
    pub fn shared(relative: &str) -> Self {
        Self {
            path: Some(shared_dir().join(relative)),
            what: format!("../shared/{relative}"),
            how: "clone the shared data beside the repository".to_owned(),
        }
    }

    /// A downloaded file or folder at `path` (`None`: no place to look, e.g. no `$HOME`),
    /// named `what` in the skip line, installed by doing `how`.
    pub fn download(what: &str, path: Option<PathBuf>, how: &str) -> Self {
        Self {
            path,
            what: what.to_owned(),
            how: how.to_owned(),
        }
    }

    /// Where the input is expected.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn present(&self) -> bool {
        self.path.as_deref().is_some_and(Path::exists)
    }

    /// What is missing: the shared path, or the download and where it was looked for.
    fn describe(&self) -> String {
        match &self.path {
            Some(path) if !self.what.starts_with("../shared/") => {
                format!("{} at {}", self.what, path.display())
            }
            _ => self.what.clone(),
        }
    }
}

/// The name of the running test (libtest names each test's thread after it).
fn test_name() -> String {
    std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .unwrap_or("<test>")
        .to_owned()
}

/// The skip line for `missing` (empty `missing`: `None`).
pub fn skip_line(test: &str, missing: &[&Need]) -> Option<String> {
    if missing.is_empty() {
        return None;
    }
    let needs: Vec<String> = missing.iter().map(|n| n.describe()).collect();
    let mut remedies: Vec<&str> = Vec::new();
    for need in missing {
        if !remedies.contains(&need.how.as_str()) {
            remedies.push(&need.how);
        }
    }
    Some(format!(
        "skipped: {test}: needs {} ({}); set {REQUIRE_ENV}=1 to make this a failure",
        needs.join(" and "),
        remedies.join("; ")
    ))
}

/// True when every need is present. Otherwise writes one skip line to stderr and returns false,
/// or panics with that line when [`required`].
pub fn available(needs: &[Need]) -> bool {
    let missing: Vec<&Need> = needs.iter().filter(|n| !n.present()).collect();
    let Some(line) = skip_line(&test_name(), &missing) else {
        return true;
    };
    if required() {
        let reason = line.strip_prefix("skipped: ").unwrap_or(&line);
        let reason = reason.split("; set ").next().unwrap_or(reason);
        panic!("a test input is missing and {REQUIRE_ENV}=1 makes that a failure: {reason}");
    }
    // Not `eprintln!`: libtest captures the print macros of a passing test, not the handle.
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
    let _ = stderr.flush();
    false
}

/// `../shared/<relative>` when it exists; otherwise skips (see [`available`]) and returns `None`.
pub fn shared(relative: &str) -> Option<PathBuf> {
    let need = Need::shared(relative);
    available(std::slice::from_ref(&need)).then(|| need.path.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_inputs_pass_and_print_nothing() {
        let here = Need::download("this crate", Some(env!("CARGO_MANIFEST_DIR").into()), "-");
        assert!(available(&[here]));
    }

    #[test]
    fn skip_line_names_the_test_every_missing_input_and_the_remedy() {
        let a = Need::shared("data/nowhere");
        let a2 = Need::shared("fixtures/none");
        let b = Need::download("model X", Some("/nonexistent/x".into()), "run fetch-x.sh");
        let c = Need::download("model Y", None, "set Y_DIR");
        let line = skip_line("t", &[&a, &b, &c, &a2]).unwrap();
        assert_eq!(
            line,
            "skipped: t: needs ../shared/data/nowhere and model X at /nonexistent/x and model Y \
             and ../shared/fixtures/none (clone the shared data beside the repository; run \
             fetch-x.sh; set Y_DIR); set STYLUS_REQUIRE_TEST_DATA=1 to make this a failure"
        );
        assert_eq!(skip_line("t", &[]), None);
        assert!(!a.present() && !b.present() && !c.present());
        assert!(a.path().unwrap().ends_with("shared/data/nowhere"));
    }

    #[test]
    fn shared_dir_is_beside_the_workspace_root() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        assert!(root.join("Cargo.toml").is_file());
        assert_eq!(shared_dir(), root.join("../shared"));
    }
}
