//! `stylus info`: explain a LoRA or checkpoint file.

use std::path::PathBuf;

use stylus_core::{StylusConfig, StylusError};
use stylus_diffusion::lora::info::{AdapterInfo, CheckpointInfo, FileInfo, describe};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A LoRA / LyCORIS file or an SD checkpoint (.safetensors or diffusers folder).
    pub file: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, _config: &StylusConfig) -> Result<(), StylusError> {
    if !args.file.exists() {
        return Err(StylusError::InvalidArgument(format!(
            "{}: no such file or directory",
            args.file.display()
        )));
    }
    if args.file.is_file() {
        // The header check that `index` uses: it says what is wrong with a file that is not
        // safetensors or is truncated, in words.
        stylus_refiner::lora_folder::read_header(&args.file)?;
    }
    let info = describe(&args.file)?;
    let unusable = match &info {
        FileInfo::Adapter(a) if a.format.is_none() => Some(
            a.error
                .clone()
                .unwrap_or_else(|| "no LoRA format recognized".into()),
        ),
        _ => None,
    };
    let result = match unusable {
        // Described (so the user sees what is in it), then a failure: the file cannot be used.
        Some(message) => Err(StylusError::UnsupportedFormat {
            path: args.file.clone(),
            message: format!("does not load on SD 1.x: {message}"),
        }),
        None => Ok(()),
    };
    if args.json {
        let text = serde_json::to_string_pretty(&info)
            .map_err(|e| StylusError::InvalidArgument(format!("info: {e}")))?;
        println!("{text}");
        return result;
    }
    match info {
        FileInfo::Adapter(info) => print_adapter(&info),
        FileInfo::Checkpoint(info) => print_checkpoint(&info),
    }
    result
}

fn counts<K: std::fmt::Display>(map: &std::collections::BTreeMap<K, usize>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_adapter(info: &AdapterInfo) {
    println!("file:        {}", info.path.display());
    println!("kind:        adapter ({} tensors)", info.tensors);
    match (&info.format, &info.error) {
        (Some(format), _) => println!("format:      {format}"),
        (None, Some(error)) => println!("format:      does not load on SD 1.x: {error}"),
        (None, None) => {}
    }
    println!(
        "base model:  {} ({})",
        info.base_model, info.base_model_evidence
    );
    if info.format.is_some() {
        println!("modules:     {}", counts(&info.modules));
        println!("per kind:    {}", counts(&info.modules_per_kind));
        println!("ranks:       {}", counts(&info.ranks));
        println!("alphas:      {}", counts(&info.alphas));
        if info.dora_modules > 0 {
            println!("DoRA:        {} modules", info.dora_modules);
        }
        if !info.unmatched_modules.is_empty() {
            println!(
                "unmatched:   {} (e.g. {})",
                info.unmatched_modules.len(),
                info.unmatched_modules[0]
            );
        }
    }
    for (key, value) in &info.metadata {
        let value: String = value.chars().take(120).collect();
        println!("  {key}: {value}");
    }
    if !info.top_tags.is_empty() {
        let tags: Vec<String> = info
            .top_tags
            .iter()
            .map(|(t, n)| format!("{t} ({n})"))
            .collect();
        println!("top tags:    {}", tags.join(", "));
    }
    let check = match info.content_hash_matches_metadata {
        Some(true) => " (matches sshs_model_hash)",
        Some(false) => " (differs from sshs_model_hash)",
        None => "",
    };
    println!("sha256 data: {}{check}", info.content_hash);
}

fn print_checkpoint(info: &CheckpointInfo) {
    println!("file:        {}", info.path.display());
    println!("kind:        checkpoint ({})", info.layout);
    for (component, count) in &info.parameters {
        println!("  {component}: {count} parameters");
    }
    println!("dtypes:      {}", counts(&info.dtypes));
    for (file, hash) in &info.content_hashes {
        println!("sha256 data: {hash}  {file}");
    }
}
