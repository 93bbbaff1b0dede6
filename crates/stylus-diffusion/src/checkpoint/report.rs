//! The load report: what was loaded from where, and the check that turns burn-store's
//! [`ApplyResult`] into "every parameter loaded, nothing unexpected, every shape right" or an
//! error listing the offenders.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use burn::store::{ApplyError, ApplyResult};
use stylus_core::{Result, StylusError};

use super::Component;

/// How one network was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentReport {
    /// The network.
    pub component: Component,
    /// The file its weights came from.
    pub file: PathBuf,
    /// Number of parameter tensors loaded (every parameter of the model).
    pub loaded: usize,
    /// File keys knowingly skipped (schedule buffers, EMA copies, position ids).
    pub ignored: Vec<String>,
    /// Source dtypes and how many loaded tensors had each (`"F16" -> 686`).
    pub source_dtypes: BTreeMap<String, usize>,
}

/// How a whole checkpoint was loaded; produced only when every network loaded completely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// `"diffusers folder"` or `"single-file LDM checkpoint"`.
    pub layout: &'static str,
    /// One entry per network.
    pub components: Vec<ComponentReport>,
}

impl LoadReport {
    /// The entry of one network.
    pub fn component(&self, component: Component) -> Option<&ComponentReport> {
        self.components.iter().find(|c| c.component == component)
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:", self.layout)?;
        for c in &self.components {
            writeln!(
                f,
                "  {:?}: {} tensors from {} ({:?}), {} ignored",
                c.component,
                c.loaded,
                c.file.display(),
                c.source_dtypes,
                c.ignored.len()
            )?;
        }
        Ok(())
    }
}

/// How many offenders an error message lists before "and N more".
const LISTED: usize = 12;

/// Turns an [`ApplyResult`] into an error unless every model parameter was loaded, no file
/// tensor was left over and no shape differed. `source_key` maps a model path back to the file
/// key it was read from, for the messages.
pub fn check_apply_result(
    result: &ApplyResult,
    component: Component,
    file: &Path,
    source_key: &dyn Fn(&str) -> String,
) -> Result<()> {
    let mut problems = Vec::new();
    let missing: Vec<String> = result
        .missing
        .iter()
        .map(|(path, _)| pytorch_name(path))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} model parameter(s) not in the file: {}",
            missing.len(),
            listing(&missing)
        ));
    }
    let unused: Vec<String> = result.unused.iter().map(|p| source_key(p)).collect();
    if !unused.is_empty() {
        problems.push(format!(
            "{} unexpected tensor(s): {}",
            unused.len(),
            listing(&unused)
        ));
    }
    let errors: Vec<String> = result
        .errors
        .iter()
        .map(|e| match e {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => format!(
                "`{}` has shape {:?} (burn layout), the model needs {:?}",
                source_key(path),
                found.to_vec(),
                expected.to_vec()
            ),
            other => other.to_string(),
        })
        .collect();
    if !errors.is_empty() {
        problems.push(format!(
            "{} bad tensor(s): {}",
            errors.len(),
            listing(&errors)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StylusError::Model {
            path: file.to_path_buf(),
            message: format!(
                "{component:?} weights do not fit the model: {}",
                problems.join("; ")
            ),
        })
    }
}

/// burn's norm parameter names (`gamma`, `beta`) back to PyTorch's (`weight`, `bias`).
pub fn pytorch_name(path: &str) -> String {
    if let Some(stem) = path.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = path.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        path.to_string()
    }
}

fn listing(items: &[String]) -> String {
    let shown: Vec<&str> = items.iter().take(LISTED).map(String::as_str).collect();
    let more = items.len().saturating_sub(LISTED);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}
