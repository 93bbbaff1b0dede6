//! Reading an adapter file into the normalized [`LoraAdapter`].
//!
//! Steps: refuse formats we do not support (cloneofsimo index keys, OFT) and adapters for other
//! base models (SDXL, SD 2, DiT models), split every key into (module name, adapter role), resolve
//! the names through the [`TargetTable`], classify each module by its set of roles, then read and
//! check its factors: completeness, ranks, shapes against the target, finiteness, alpha.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use stylus_core::{Result, StylusError};

use super::adapter::{AdapterKind, AdapterModule, Dora, DoraAxis, Factor, KronFactor, LoraAdapter};
use super::base_model::check_base_model;
use super::file::TensorFile;
use super::targets::{LayerKind, TargetModule, TargetTable};

/// How strict parsing is about keys that resolve to nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// Fail when any module or key is not understood (default: warn and report them).
    pub strict: bool,
}

/// What a key contributes to its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Up,
    Down,
    Mid,
    Alpha,
    DoraScale,
    Scale,
    HadaW1a,
    HadaW1b,
    HadaW2a,
    HadaW2b,
    HadaT1,
    HadaT2,
    LokrW1,
    LokrW1a,
    LokrW1b,
    LokrW2,
    LokrW2a,
    LokrW2b,
    LokrT2,
    Diff,
    DiffB,
    Ia3Weight,
    Ia3OnInput,
    /// A known algorithm we do not implement.
    Unsupported(&'static str),
}

/// How a key's suffix is spelled: it tells the file's naming family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SuffixStyle {
    /// `.lora_up.weight`, `.hada_w1_a`, `.alpha`, ... (kohya and LyCORIS).
    Kohya,
    /// `.lora_A.weight` / `.lora_B.weight`.
    Peft,
    /// `.lora.up.weight`, `_lora.up.weight`, `.lora_linear_layer.up.weight`.
    Diffusers,
}

/// Adapter suffixes, longest spellings first so that `.lora_A.weight` wins over `.weight`.
const SUFFIXES: &[(&str, Role, SuffixStyle)] = &[
    (
        ".lora_linear_layer.down.weight",
        Role::Down,
        SuffixStyle::Diffusers,
    ),
    (
        ".lora_linear_layer.up.weight",
        Role::Up,
        SuffixStyle::Diffusers,
    ),
    ("_lora.down.weight", Role::Down, SuffixStyle::Diffusers),
    ("_lora.up.weight", Role::Up, SuffixStyle::Diffusers),
    (".lora.down.weight", Role::Down, SuffixStyle::Diffusers),
    (".lora.up.weight", Role::Up, SuffixStyle::Diffusers),
    (".lora_down.weight", Role::Down, SuffixStyle::Kohya),
    (".lora_up.weight", Role::Up, SuffixStyle::Kohya),
    (".lora_mid.weight", Role::Mid, SuffixStyle::Kohya),
    (".lora_A.weight", Role::Down, SuffixStyle::Peft),
    (".lora_B.weight", Role::Up, SuffixStyle::Peft),
    (".dora_scale", Role::DoraScale, SuffixStyle::Kohya),
    (".hada_w1_a", Role::HadaW1a, SuffixStyle::Kohya),
    (".hada_w1_b", Role::HadaW1b, SuffixStyle::Kohya),
    (".hada_w2_a", Role::HadaW2a, SuffixStyle::Kohya),
    (".hada_w2_b", Role::HadaW2b, SuffixStyle::Kohya),
    (".hada_t1", Role::HadaT1, SuffixStyle::Kohya),
    (".hada_t2", Role::HadaT2, SuffixStyle::Kohya),
    (".lokr_w1_a", Role::LokrW1a, SuffixStyle::Kohya),
    (".lokr_w1_b", Role::LokrW1b, SuffixStyle::Kohya),
    (".lokr_w2_a", Role::LokrW2a, SuffixStyle::Kohya),
    (".lokr_w2_b", Role::LokrW2b, SuffixStyle::Kohya),
    (".lokr_w1", Role::LokrW1, SuffixStyle::Kohya),
    (".lokr_w2", Role::LokrW2, SuffixStyle::Kohya),
    (".lokr_t2", Role::LokrT2, SuffixStyle::Kohya),
    (".on_input", Role::Ia3OnInput, SuffixStyle::Kohya),
    (".diff_b", Role::DiffB, SuffixStyle::Kohya),
    (".diff", Role::Diff, SuffixStyle::Kohya),
    (".alpha", Role::Alpha, SuffixStyle::Kohya),
    (".scale", Role::Scale, SuffixStyle::Kohya),
    (".oft_blocks", Role::Unsupported("oft"), SuffixStyle::Kohya),
    (".oft_diag", Role::Unsupported("oft"), SuffixStyle::Kohya),
    (".a1.weight", Role::Unsupported("glora"), SuffixStyle::Kohya),
    (".a2.weight", Role::Unsupported("glora"), SuffixStyle::Kohya),
    (".b1.weight", Role::Unsupported("glora"), SuffixStyle::Kohya),
    (".b2.weight", Role::Unsupported("glora"), SuffixStyle::Kohya),
    (".w_norm", Role::Unsupported("norm"), SuffixStyle::Kohya),
    (".b_norm", Role::Unsupported("norm"), SuffixStyle::Kohya),
    // Last: IA^3 stores its vector as plain `.weight` (with `.on_input` beside it).
    (".weight", Role::Ia3Weight, SuffixStyle::Kohya),
];

/// Splits a key into (module name, role, suffix style).
fn split_key(key: &str) -> Option<(&str, Role, SuffixStyle)> {
    SUFFIXES.iter().find_map(|(suffix, role, style)| {
        key.strip_suffix(suffix)
            .filter(|module| !module.is_empty())
            .map(|module| (module, *role, *style))
    })
}

/// True for the cloneofsimo/lora index-keyed layout (`unet:12:up`).
fn is_cloneofsimo_key(key: &str) -> bool {
    let mut parts = key.split(':');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some("unet" | "text_encoder"), Some(index), Some("up" | "down"), None)
            if index.parse::<usize>().is_ok()
    )
}

/// Reads the adapter file at `path` and resolves it against `table`.
pub fn load_adapter(
    path: &Path,
    table: &TargetTable,
    options: ParseOptions,
) -> Result<LoraAdapter> {
    let file = TensorFile::open(path)?;
    parse_adapter(&file, table, options)
}

/// Resolves an already opened adapter file against `table`.
pub fn parse_adapter(
    file: &TensorFile,
    table: &TargetTable,
    options: ParseOptions,
) -> Result<LoraAdapter> {
    let path = file.path();
    let unsupported = |message: String| StylusError::UnsupportedFormat {
        path: path.to_path_buf(),
        message,
    };
    if file.tensors().is_empty() {
        return Err(unsupported("the file holds no tensors".into()));
    }
    if let Some(key) = file.tensors().keys().find(|k| is_cloneofsimo_key(k)) {
        return Err(unsupported(format!(
            "unsupported LoRA format (cloneofsimo index-keyed, e.g. `{key}`): its keys number the \
             modules in training order instead of naming them; convert it with the cloneofsimo \
             tools to kohya or diffusers format"
        )));
    }
    check_base_model(file)?;

    // Group keys by module name.
    let mut groups: BTreeMap<&str, BTreeMap<Role, (&str, SuffixStyle)>> = BTreeMap::new();
    let mut unknown_keys = Vec::new();
    let mut ignored = Vec::new();
    for key in file.tensors().keys() {
        if key.starts_with("bundle_emb.") {
            ignored.push(key.clone());
            continue;
        }
        match split_key(key) {
            Some((module, role, style)) => {
                groups.entry(module).or_default().insert(role, (key, style));
            }
            None => unknown_keys.push(key.clone()),
        }
    }
    if !ignored.is_empty() {
        tracing::warn!(
            "{}: ignoring {} embedded textual-inversion tensors (bundle_emb.*)",
            path.display(),
            ignored.len()
        );
    }

    let peft_alphas = PeftAlphas::from_metadata(file)?;
    let mut modules = Vec::new();
    let mut unmatched = Vec::new();
    let mut first_name_of_target: BTreeMap<usize, &str> = BTreeMap::new();
    let mut naming_styles = BTreeSet::new();
    for (name, roles) in &groups {
        let Some(target_index) = table.resolve(name) else {
            // An IA^3-looking `.weight` alone is just an unknown tensor, not a module.
            unmatched.push((*name).to_string());
            continue;
        };
        if let Some(other) = first_name_of_target.insert(target_index, name) {
            return Err(StylusError::tensor(
                path,
                *name,
                format!(
                    "module `{}` is reached twice, as `{other}` and `{name}`",
                    table.module(target_index).id
                ),
            ));
        }
        let target = table.module(target_index);
        let reader = ModuleReader {
            file,
            name,
            target,
            roles,
        };
        let style = roles
            .values()
            .map(|(_, s)| *s)
            .max()
            .unwrap_or(SuffixStyle::Kohya);
        naming_styles.insert(naming_family(name, style));
        let Some(mut module) = reader.read(target_index, &mut unknown_keys)? else {
            unmatched.push((*name).to_string());
            continue;
        };
        if style != SuffixStyle::Kohya
            && module.alpha.is_none()
            && let Some((alpha, rslora)) = peft_alphas.alpha_for(target)
        {
            let rank = module.rank.unwrap_or(1) as f32;
            module.alpha = Some(alpha);
            module.scale = if rslora {
                alpha / rank.sqrt()
            } else {
                alpha / rank
            };
        }
        modules.push(module);
    }

    if modules.is_empty() {
        let examples: Vec<&str> = groups.keys().take(5).copied().collect();
        return Err(StylusError::Model {
            path: path.to_path_buf(),
            message: format!(
                "the adapter matches no module of the SD 1.x UNet or text encoder ({} module \
                 names, e.g. {}); it is not a LoRA for this model or uses an unknown layout",
                groups.len(),
                examples.join(", ")
            ),
        });
    }
    if !unmatched.is_empty() || !unknown_keys.is_empty() {
        let examples: Vec<&str> = unmatched
            .iter()
            .chain(&unknown_keys)
            .take(10)
            .map(String::as_str)
            .collect();
        if options.strict {
            return Err(StylusError::Model {
                path: path.to_path_buf(),
                message: format!(
                    "{} module names match no model module and {} keys are not understood: {}",
                    unmatched.len(),
                    unknown_keys.len(),
                    examples.join(", ")
                ),
            });
        }
        tracing::warn!(
            "{}: {} unmatched modules and {} unknown keys skipped, e.g. {}",
            path.display(),
            unmatched.len(),
            unknown_keys.len(),
            examples.join(", ")
        );
    }

    let format = format_name(&naming_styles, &modules, table);
    Ok(LoraAdapter {
        path: path.to_path_buf(),
        format,
        modules,
        unmatched,
        unknown_keys,
        ignored,
        metadata: file.metadata().clone(),
        content_hash: file.content_hash(),
    })
}

/// The naming family of a module name: `kohya`, `kohya_ldm`, `lycoris`, `peft`, `diffusers`,
/// `comfyui`.
fn naming_family(name: &str, style: SuffixStyle) -> &'static str {
    match style {
        SuffixStyle::Peft => "peft",
        SuffixStyle::Diffusers => "diffusers",
        SuffixStyle::Kohya => {
            const LDM_BLOCKS: [&str; 5] = [
                "lora_unet_input_blocks_",
                "lora_unet_middle_block_",
                "lora_unet_output_blocks_",
                "lora_unet_time_embed_",
                "lora_unet_out_",
            ];
            if name.starts_with("lycoris_") {
                "lycoris"
            } else if name.starts_with("diffusion_model.") {
                "comfyui"
            } else if LDM_BLOCKS.iter().any(|b| name.starts_with(b)) {
                "kohya_ldm"
            } else if name.starts_with("lora_") {
                "kohya"
            } else {
                "diffusers"
            }
        }
    }
}

/// The format label: naming family plus algorithms (`kohya_lora`, `kohya_locon`,
/// `lycoris_lokr`, `peft`, `kohya_lora+dora`).
fn format_name(
    families: &BTreeSet<&str>,
    modules: &[AdapterModule],
    table: &TargetTable,
) -> String {
    let algorithms: BTreeSet<&str> = modules.iter().map(|m| m.kind.algorithm()).collect();
    let locon = modules.iter().any(|m| {
        let target = table.module(m.target);
        matches!(m.kind, AdapterKind::Lora { .. })
            && (target.shape.len() == 4 && target.shape[2] > 1
                || target.id.contains(".resnets.")
                || target.id.starts_with("time_embedding"))
    });
    let family = if families.len() == 1 {
        families.iter().next().copied().unwrap_or("unknown")
    } else {
        "mixed"
    };
    let mut label = match family {
        "peft" | "diffusers" => family.to_string(),
        _ if algorithms.len() == 1 && algorithms.contains("lora") => {
            format!("{family}_{}", if locon { "locon" } else { "lora" })
        }
        "kohya" | "lycoris" => format!(
            "lycoris_{}",
            algorithms.iter().copied().collect::<Vec<_>>().join("+")
        ),
        _ => format!(
            "{family}_{}",
            algorithms.iter().copied().collect::<Vec<_>>().join("+")
        ),
    };
    if modules.iter().any(|m| m.dora.is_some()) {
        label.push_str("+dora");
    }
    label
}

/// The keys of one module and how to read them.
struct ModuleReader<'a> {
    file: &'a TensorFile,
    name: &'a str,
    target: &'a TargetModule,
    roles: &'a BTreeMap<Role, (&'a str, SuffixStyle)>,
}

impl ModuleReader<'_> {
    fn error(&self, message: impl Into<String>) -> StylusError {
        StylusError::tensor(self.file.path(), self.name, message)
    }

    fn has(&self, role: Role) -> bool {
        self.roles.contains_key(&role)
    }

    fn factor(&self, role: Role) -> Result<Option<Factor>> {
        let Some((key, _)) = self.roles.get(&role) else {
            return Ok(None);
        };
        let shape = self.file.info(key)?.shape.clone();
        Ok(Some(Factor {
            shape,
            values: self.file.f32(key)?,
        }))
    }

    fn required(&self, role: Role, what: &str) -> Result<Factor> {
        self.factor(role)?
            .ok_or_else(|| self.error(format!("incomplete module: `{what}` is missing")))
    }

    /// The module in normalized form; `None` when it has no adapter tensor at all (only unknown
    /// or modifier keys), which the caller reports as unmatched.
    fn read(
        &self,
        target_index: usize,
        unknown_keys: &mut Vec<String>,
    ) -> Result<Option<AdapterModule>> {
        if let Some(Role::Unsupported(algorithm)) = self
            .roles
            .keys()
            .find(|r| matches!(r, Role::Unsupported(_)))
        {
            return Err(self.error(format!(
                "adapter algorithm `{algorithm}` is not supported (supported: LoRA/LoCon, LoHa, \
                 LoKr, full diff, IA3, DoRA)"
            )));
        }
        let families = [
            (
                self.has(Role::Up) || self.has(Role::Down) || self.has(Role::Mid),
                "lora",
            ),
            (
                [Role::HadaW1a, Role::HadaW1b, Role::HadaW2a, Role::HadaW2b]
                    .iter()
                    .any(|r| self.has(*r)),
                "loha",
            ),
            (
                [
                    Role::LokrW1,
                    Role::LokrW1a,
                    Role::LokrW1b,
                    Role::LokrW2,
                    Role::LokrW2a,
                    Role::LokrW2b,
                ]
                .iter()
                .any(|r| self.has(*r)),
                "lokr",
            ),
            (self.has(Role::Diff), "full"),
            (self.has(Role::Ia3OnInput), "ia3"),
        ];
        let present: Vec<&str> = families
            .iter()
            .filter(|(p, _)| *p)
            .map(|(_, n)| *n)
            .collect();
        if present.len() > 1 {
            return Err(self.error(format!(
                "module mixes adapter types: {}",
                present.join(", ")
            )));
        }
        let Some(&algorithm) = present.first() else {
            unknown_keys.extend(self.roles.values().map(|(k, _)| (*k).to_string()));
            return Ok(None);
        };
        // `.weight` only means IA^3 next to `.on_input`.
        if algorithm != "ia3"
            && let Some((key, _)) = self.roles.get(&Role::Ia3Weight)
        {
            unknown_keys.push((*key).to_string());
        }
        let (kind, rank) = match algorithm {
            "lora" => self.read_lora()?,
            "loha" => self.read_loha()?,
            "lokr" => self.read_lokr()?,
            "full" => self.read_full()?,
            _ => self.read_ia3()?,
        };
        let alpha = self.alpha()?;
        let scale = match (self.factor(Role::Scale)?, &kind) {
            (Some(scale), _) => {
                let value = scale.values[0];
                if scale.numel() != 1 {
                    return Err(self.error(format!(
                        "`scale` must hold one value, got shape {:?}",
                        scale.shape
                    )));
                }
                value
            }
            (None, AdapterKind::Full { .. } | AdapterKind::Ia3 { .. }) => 1.0,
            (None, _) => match (alpha, rank) {
                (Some(alpha), Some(rank)) => alpha / rank as f32,
                _ => 1.0,
            },
        };
        Ok(Some(AdapterModule {
            name: self.name.to_string(),
            target: target_index,
            network: self.target.network,
            kind,
            rank,
            alpha,
            scale,
            dora: self.dora()?,
        }))
    }

    /// Alpha per the kohya rule: absent or 0 means alpha = rank (returned as `None`).
    fn alpha(&self) -> Result<Option<f32>> {
        let Some((key, _)) = self.roles.get(&Role::Alpha) else {
            return Ok(None);
        };
        let value = self.file.scalar(key)? as f32;
        if value < 0.0 {
            return Err(self.error(format!("alpha must not be negative, got {value}")));
        }
        Ok((value != 0.0).then_some(value))
    }

    fn dora(&self) -> Result<Option<Dora>> {
        let Some(scale) = self.factor(Role::DoraScale)? else {
            return Ok(None);
        };
        let out = self.target.out_features();
        let inputs = self.target.shape[1];
        let axis = if scale.rows() == out && scale.cols() == 1 {
            DoraAxis::Output
        } else if scale.rows() == 1 && scale.numel() == inputs {
            DoraAxis::Input
        } else {
            return Err(self.error(format!(
                "`dora_scale` of shape {:?} fits neither [{out}, 1, ..] nor [1, {inputs}, ..] \
                 (target {:?})",
                scale.shape, self.target.shape
            )));
        };
        Ok(Some(Dora {
            scale: scale.values,
            axis,
        }))
    }

    fn shape_error(&self, what: &str, got: &[usize], expected: String) -> StylusError {
        self.error(format!(
            "shape mismatch: `{what}` is {got:?}, the target `{}` {:?} needs {expected}",
            self.target.id, self.target.shape
        ))
    }

    fn rank_error(&self, a: (&str, usize), b: (&str, usize)) -> StylusError {
        self.error(format!(
            "rank mismatch: {} has rank {} but {} has rank {}",
            a.0, a.1, b.0, b.1
        ))
    }

    /// The kernel of a convolution target, `[1, 1]` for a linear.
    fn kernel(&self) -> [usize; 2] {
        match self.target.layer {
            LayerKind::Linear => [1, 1],
            LayerKind::Conv2d => [self.target.shape[2], self.target.shape[3]],
        }
    }

    fn read_lora(&self) -> Result<(AdapterKind, Option<usize>)> {
        let up = self.required(Role::Up, "lora_up")?;
        let down = self.required(Role::Down, "lora_down")?;
        let mid = self.factor(Role::Mid)?;
        let rank = down.rows();
        let out = self.target.out_features();
        if up.rows() != out {
            return Err(self.shape_error("up", &up.shape, format!("{out} rows")));
        }
        match &mid {
            None => {
                if up.cols() != rank {
                    return Err(self.rank_error(("up", up.cols()), ("down", rank)));
                }
                if down.cols() != self.target.in_elements() {
                    return Err(self.shape_error(
                        "down",
                        &down.shape,
                        format!("{} columns (in x kh x kw)", self.target.in_elements()),
                    ));
                }
            }
            Some(mid) => {
                let kernel = self.kernel();
                if mid.shape.len() != 4 || mid.shape[2..] != kernel {
                    return Err(self.shape_error("mid", &mid.shape, format!("kernel {kernel:?}")));
                }
                if mid.shape[0] != up.cols() || mid.shape[1] != rank {
                    return Err(self.rank_error(("mid", mid.shape[1]), ("down", rank)));
                }
                if down.cols() != self.target.shape[1] {
                    return Err(self.shape_error(
                        "down",
                        &down.shape,
                        format!("{} input channels", self.target.shape[1]),
                    ));
                }
            }
        }
        Ok((AdapterKind::Lora { up, down, mid }, Some(rank)))
    }

    fn read_loha(&self) -> Result<(AdapterKind, Option<usize>)> {
        let w1_a = self.required(Role::HadaW1a, "hada_w1_a")?;
        let w1_b = self.required(Role::HadaW1b, "hada_w1_b")?;
        let w2_a = self.required(Role::HadaW2a, "hada_w2_a")?;
        let w2_b = self.required(Role::HadaW2b, "hada_w2_b")?;
        let tucker = match (self.factor(Role::HadaT1)?, self.factor(Role::HadaT2)?) {
            (Some(t1), Some(t2)) => Some((t1, t2)),
            (None, None) => None,
            (Some(_), None) => return Err(self.error("incomplete module: `hada_t2` is missing")),
            (None, Some(_)) => return Err(self.error("incomplete module: `hada_t1` is missing")),
        };
        let rank = w1_b.rows();
        let out = self.target.out_features();
        match &tucker {
            None => {
                for (a_name, a, b_name, b) in [
                    ("hada_w1_a", &w1_a, "hada_w1_b", &w1_b),
                    ("hada_w2_a", &w2_a, "hada_w2_b", &w2_b),
                ] {
                    if a.cols() != b.rows() {
                        return Err(self.rank_error((a_name, a.cols()), (b_name, b.rows())));
                    }
                    if a.rows() != out {
                        return Err(self.shape_error(a_name, &a.shape, format!("{out} rows")));
                    }
                    if b.cols() != self.target.in_elements() {
                        return Err(self.shape_error(
                            b_name,
                            &b.shape,
                            format!("{} columns", self.target.in_elements()),
                        ));
                    }
                }
            }
            Some((t1, t2)) => {
                for (t_name, t, a, b) in
                    [("hada_t1", t1, &w1_a, &w1_b), ("hada_t2", t2, &w2_a, &w2_b)]
                {
                    self.check_tucker(t_name, t, a, b)?;
                }
            }
        }
        Ok((
            AdapterKind::Loha {
                w1_a,
                w1_b,
                w2_a,
                w2_b,
                tucker,
            },
            Some(rank),
        ))
    }

    /// A Tucker core `[p, q, kh, kw]` with `a` `[p, out]` and `b` `[q, in]`.
    fn check_tucker(&self, name: &str, core: &Factor, a: &Factor, b: &Factor) -> Result<()> {
        let kernel = self.kernel();
        if core.shape.len() != 4 || core.shape[2..] != kernel {
            return Err(self.shape_error(
                name,
                &core.shape,
                format!("a [r, r, {}, {}] core", kernel[0], kernel[1]),
            ));
        }
        if core.shape[0] != a.rows() {
            return Err(self.rank_error((name, core.shape[0]), ("its left factor", a.rows())));
        }
        if core.shape[1] != b.rows() {
            return Err(self.rank_error((name, core.shape[1]), ("its right factor", b.rows())));
        }
        if a.cols() != self.target.out_features() || b.cols() != self.target.shape[1] {
            return Err(self.shape_error(
                name,
                &[a.cols(), b.cols()],
                format!(
                    "[{}, {}] (out, in)",
                    self.target.out_features(),
                    self.target.shape[1]
                ),
            ));
        }
        Ok(())
    }

    fn kron_factor(
        &self,
        whole: Role,
        a: Role,
        b: Role,
        tucker: Option<Role>,
        name: &str,
    ) -> Result<(KronFactor, Option<usize>)> {
        if let Some(factor) = self.factor(whole)? {
            return Ok((KronFactor::Whole(factor), None));
        }
        let a = self.required(a, &format!("{name}_a` (or `{name}"))?;
        let b = self.required(b, &format!("{name}_b"))?;
        let rank = b.rows();
        let tucker = match tucker {
            Some(role) => self.factor(role)?,
            None => None,
        };
        match &tucker {
            None if a.cols() != b.rows() => {
                return Err(self.rank_error(
                    (&format!("{name}_a"), a.cols()),
                    (&format!("{name}_b"), b.rows()),
                ));
            }
            Some(core)
                if core.shape.len() != 4
                    || core.shape[0] != a.rows()
                    || core.shape[1] != b.rows() =>
            {
                return Err(
                    self.rank_error(("lokr_t2", core.shape[0]), (&format!("{name}_a"), a.rows()))
                );
            }
            _ => {}
        }
        Ok((KronFactor::Decomposed { a, b, tucker }, Some(rank)))
    }

    fn read_lokr(&self) -> Result<(AdapterKind, Option<usize>)> {
        let (w1, rank1) =
            self.kron_factor(Role::LokrW1, Role::LokrW1a, Role::LokrW1b, None, "lokr_w1")?;
        let (w2, rank2) = self.kron_factor(
            Role::LokrW2,
            Role::LokrW2a,
            Role::LokrW2b,
            Some(Role::LokrT2),
            "lokr_w2",
        )?;
        let (rows1, cols1) = kron_dims(&w1);
        let (rows2, cols2) = kron_dims(&w2);
        if rows1 * rows2 != self.target.out_features() || cols1 * cols2 != self.target.in_elements()
        {
            return Err(self.shape_error(
                "kron(w1, w2)",
                &[rows1 * rows2, cols1 * cols2],
                format!(
                    "[{}, {}]",
                    self.target.out_features(),
                    self.target.in_elements()
                ),
            ));
        }
        Ok((AdapterKind::Lokr { w1, w2 }, rank2.or(rank1)))
    }

    fn read_full(&self) -> Result<(AdapterKind, Option<usize>)> {
        let diff = self.required(Role::Diff, "diff")?;
        if diff.shape != self.target.shape {
            return Err(self.shape_error("diff", &diff.shape, "the same shape".into()));
        }
        let diff_b = self.factor(Role::DiffB)?;
        if let Some(bias) = &diff_b
            && (!self.target.has_bias || bias.numel() != self.target.out_features())
        {
            return Err(self.shape_error(
                "diff_b",
                &bias.shape,
                "a bias of the output size".into(),
            ));
        }
        Ok((AdapterKind::Full { diff, diff_b }, None))
    }

    fn read_ia3(&self) -> Result<(AdapterKind, Option<usize>)> {
        let weight = self.required(Role::Ia3Weight, "weight")?;
        let (key, _) = self.roles[&Role::Ia3OnInput];
        let on_input = self.file.scalar(key)? != 0.0;
        let expected = if on_input {
            self.target.shape[1]
        } else {
            self.target.out_features()
        };
        if weight.numel() != expected {
            return Err(self.shape_error("weight", &weight.shape, format!("{expected} values")));
        }
        Ok((AdapterKind::Ia3 { weight, on_input }, None))
    }
}

/// (rows, cols) of a Kronecker factor viewed as a matrix.
pub(crate) fn kron_dims(factor: &KronFactor) -> (usize, usize) {
    match factor {
        KronFactor::Whole(w) => (w.rows(), w.cols()),
        KronFactor::Decomposed { a, b, tucker: None } => (a.rows(), b.cols()),
        // einsum('i j k l, j r, i p -> p r k l'): rows = a's columns, cols = b's columns x kernel.
        KronFactor::Decomposed {
            a,
            b,
            tucker: Some(core),
        } => (
            a.cols(),
            b.cols() * core.shape[2..].iter().product::<usize>(),
        ),
    }
}

/// PEFT alphas from the `lora_adapter_metadata` JSON that diffusers' `save_lora_weights` writes
/// (`{"unet.r": 4, "unet.lora_alpha": 8, "unet.alpha_pattern": {...}, "text_encoder.*": ...}`).
#[derive(Debug, Default)]
struct PeftAlphas {
    /// Per network prefix (`unet`, `text_encoder`).
    networks: BTreeMap<String, PeftNetworkAlphas>,
}

/// The alpha settings of one network's PEFT config.
#[derive(Debug, Default)]
struct PeftNetworkAlphas {
    lora_alpha: Option<f32>,
    /// `(module name pattern, alpha)`.
    alpha_pattern: Vec<(String, f32)>,
    /// rsLoRA: scale alpha / sqrt(r).
    use_rslora: bool,
}

impl PeftAlphas {
    fn from_metadata(file: &TensorFile) -> Result<Self> {
        let Some(raw) = file.metadata().get("lora_adapter_metadata") else {
            return Ok(Self::default());
        };
        let json: serde_json::Value = serde_json::from_str(raw).map_err(|e| StylusError::Json {
            path: file.path().to_path_buf(),
            line: None,
            message: format!("metadata `lora_adapter_metadata`: {e}"),
            source: Some(Box::new(e)),
        })?;
        let mut networks: BTreeMap<String, PeftNetworkAlphas> = BTreeMap::new();
        for (key, value) in json.as_object().into_iter().flatten() {
            let Some((prefix, field)) = key.split_once('.') else {
                continue;
            };
            let entry = networks.entry(prefix.to_string()).or_default();
            match field {
                "lora_alpha" => entry.lora_alpha = value.as_f64().map(|v| v as f32),
                "alpha_pattern" => {
                    entry.alpha_pattern = value
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()? as f32)))
                        .collect();
                }
                "use_rslora" => entry.use_rslora = value.as_bool().unwrap_or(false),
                _ => {}
            }
        }
        Ok(Self { networks })
    }

    /// The alpha PEFT would use for `target` (a matching `alpha_pattern` entry, PEFT matches
    /// `(.*\.)?<pattern>$`, else `lora_alpha`) and whether rsLoRA scaling applies.
    fn alpha_for(&self, target: &TargetModule) -> Option<(f32, bool)> {
        let prefix = match target.network {
            super::targets::Network::Unet => "unet",
            super::targets::Network::TextEncoder => "text_encoder",
        };
        let network = self.networks.get(prefix)?;
        let alpha = network
            .alpha_pattern
            .iter()
            .find(|(pattern, _)| {
                target.id == *pattern || target.id.ends_with(&format!(".{pattern}"))
            })
            .map(|(_, alpha)| *alpha)
            .or(network.lora_alpha)?;
        Some((alpha, network.use_rslora))
    }
}
