//! `stylus select`: prompt -> topics, adapters, weights, masks, A1111 prompt.
//!
//! Builds a `Stylus` pipeline from a StylusDocs store (`--index`) or the bundled default catalog,
//! with the local or the LLM composer, and prints each plan for humans or as JSON.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use stylus::{ComposerKind, Stylus};
use stylus_core::{
    MaskStrategy, SelectOptions, SelectionPlan, StylusConfig, StylusError, format_weight,
};

/// Masks listed in the human output before "... and N more".
const MASKS_SHOWN: usize = 16;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
LLM composer (--composer llm), an OpenAI-compatible /v1/chat/completions server:
  STYLUS_LLM_BASE_URL  API root with its version segment; when unset OPENAI_BASE_URL, else
                       https://api.openai.com/v1 (Ollama http://localhost:11434/v1, llama.cpp/vLLM
                       http://localhost:8080/v1, Gemini
                       https://generativelanguage.googleapis.com/v1beta/openai)
  STYLUS_LLM_MODEL     model name (default gpt-4o-mini)
  STYLUS_LLM_API_KEY   API key; when unset OPENAI_API_KEY, else no key is sent
(`stylus index` reads the same names with STYLUS_VLM_ for --refiner vlm and STYLUS_EMBED_ for
--embedder openai.)")]
pub struct Args {
    /// StylusDocs store directory (default: the bundled catalog).
    #[arg(long, value_name = "DIR")]
    pub index: Option<PathBuf>,
    /// Composer: `local` (offline, deterministic) or `llm` (OpenAI-compatible server).
    #[arg(long, value_enum, default_value_t = ComposerKind::Local)]
    pub composer: ComposerKind,
    /// Mask strategy (default: the config's).
    #[arg(long, value_enum)]
    pub masks: Option<MaskStrategy>,
    /// Sample this many masks (one per image, 1..=256); default: list every mask.
    #[arg(long, value_parser = super::usize_in(stylus_core::limits::BATCH))]
    pub batch: Option<usize>,
    /// Seed for mask sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A file with one prompt per line (one JSON line each).
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    pub prompts: Option<PathBuf>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// The prompt.
    pub prompt: Option<String>,
}

pub fn run(args: Args, config: &StylusConfig) -> Result<(), StylusError> {
    let strategy = args.masks.unwrap_or(config.masks.strategy);
    if args.batch == Some(0) {
        return Err(StylusError::InvalidArgument(
            "--batch must be at least 1".into(),
        ));
    }
    let prompts = read_prompts(&args)?;
    let (stylus, open_ms) = build(&args, config, strategy)?;
    let runtime = super::runtime()?;
    let options = SelectOptions {
        batch: args.batch,
        seed: args.seed,
    };
    let mut out = std::io::stdout().lock();
    for prompt in &prompts {
        let plan = runtime.block_on(stylus.select_with(prompt, options))?;
        let written = if args.json || args.prompts.is_some() {
            let json_error = |e: serde_json::Error| StylusError::Json {
                path: "<plan>".into(),
                line: None,
                message: e.to_string(),
                source: Some(Box::new(e)),
            };
            let mut value = serde_json::to_value(&plan).map_err(json_error)?;
            // The catalog is opened once per run: its cost is part of every answer's timings.
            value["timings_ms"]["open"] = serde_json::json!(open_ms);
            let line = serde_json::to_string(&value).map_err(json_error)?;
            writeln!(out, "{line}")
        } else {
            print_plan(&mut out, &plan, strategy, open_ms)
        };
        written.map_err(|e| StylusError::io("<stdout>", e))?;
    }
    Ok(())
}

/// The prompts: one per non-empty line of `--prompts`, or the prompt argument.
fn read_prompts(args: &Args) -> Result<Vec<String>, StylusError> {
    match (&args.prompts, &args.prompt) {
        (Some(path), _) => {
            let file = std::fs::File::open(path).map_err(|e| StylusError::io(path, e))?;
            let mut prompts = Vec::new();
            for line in std::io::BufReader::new(file).lines() {
                let line = line.map_err(|e| StylusError::io(path, e))?;
                let line = stylus_core::text::clean_prompt(&line);
                if !line.is_empty() {
                    prompts.push(line);
                }
            }
            if prompts.is_empty() {
                return Err(StylusError::InvalidArgument(format!(
                    "{}: no prompts in the file",
                    path.display()
                )));
            }
            Ok(prompts)
        }
        (None, Some(prompt)) if !stylus_core::text::clean_prompt(prompt).is_empty() => {
            Ok(vec![stylus_core::text::clean_prompt(prompt)])
        }
        _ => Err(StylusError::InvalidArgument(
            "give a prompt or --prompts FILE".into(),
        )),
    }
}

/// The pipeline (the library facade): embedder and retriever from the store or the bundled
/// catalog, the chosen composer, the masker of `strategy`.
fn build(
    args: &Args,
    config: &StylusConfig,
    strategy: MaskStrategy,
) -> Result<(Stylus, f64), StylusError> {
    let stylus = Stylus::options()
        .composer(args.composer)
        .mask_strategy(strategy)
        .network(super::network_flags())
        .open(args.index.as_deref(), config)?;
    let open_ms = stylus.open_ms();
    Ok((stylus, open_ms))
}

/// The plan for people: topics in prompt order with their adapters, the masks, the A1111 prompt.
fn print_plan(
    out: &mut impl Write,
    plan: &SelectionPlan,
    strategy: MaskStrategy,
    open_ms: f64,
) -> std::io::Result<()> {
    // Catalog text (titles, triggers) is untrusted: control characters are shown escaped.
    let esc = stylus_core::text::escape_control;
    writeln!(out, "prompt: {}", esc(&plan.prompt))?;
    writeln!(out, "topics:")?;
    for (t, topic) in plan.topics.iter().enumerate() {
        if topic.adapters.is_empty() {
            writeln!(out, "  {}. {}  (no adapter)", t + 1, esc(&topic.text))?;
            continue;
        }
        writeln!(out, "  {}. {}", t + 1, esc(&topic.text))?;
        for a in &topic.adapters {
            let category = a.category.map_or("-", |c| c.as_str());
            write!(
                out,
                "       {} \"{}\" [{category}] <lora:{}:{}>",
                esc(&a.id.to_string()),
                esc(&a.title),
                esc(&a.alias),
                format_weight(a.weight)
            )?;
            if !a.trigger_words.is_empty() {
                write!(out, "  trigger: {}", esc(&a.trigger_words.join(", ")))?;
            }
            writeln!(out)?;
        }
    }
    writeln!(out, "masks ({}, {}):", strategy.as_str(), plan.masks.len())?;
    for (m, mask) in plan.masks.iter().take(MASKS_SHOWN).enumerate() {
        let on: Vec<String> = mask
            .adapters
            .iter()
            .map(|a| format!("{}:{}", esc(&a.alias), format_weight(a.weight)))
            .collect();
        let on = if on.is_empty() {
            "(none)".to_string()
        } else {
            on.join(" ")
        };
        writeln!(out, "  {}. {on}", m + 1)?;
    }
    if plan.masks.len() > MASKS_SHOWN {
        writeln!(
            out,
            "  ... and {} more (--json lists them all, --batch N samples N)",
            plan.masks.len() - MASKS_SHOWN
        )?;
    }
    writeln!(out, "a1111 prompt:\n  {}", esc(&plan.a1111_prompt))?;
    let t = &plan.timings_ms;
    writeln!(
        out,
        "timings: open catalog {open_ms:.1} ms (once per run), embed {:.2} ms, retrieve {:.2} ms, \
         compose {:.2} ms ({} candidates)",
        t.embed, t.retrieve, t.compose, plan.candidates
    )
}

#[cfg(test)]
mod tests {
    use stylus_core::RetrievalMode;

    use super::*;

    fn args(prompt: &str) -> Args {
        Args {
            index: None,
            composer: ComposerKind::Local,
            masks: None,
            batch: Some(3),
            seed: 1,
            prompts: None,
            json: true,
            prompt: Some(prompt.into()),
        }
    }

    #[test]
    fn bundled_select_gives_the_plan_of_the_issue() {
        // Four topics with an adapter each: a budget of four (the default is three).
        let mut config = StylusConfig::default();
        config.composer.max_adapters = 4;
        let (stylus, _) = build(&args("x"), &config, MaskStrategy::OneHotLoras).unwrap();
        let options = SelectOptions {
            batch: Some(3),
            seed: 1,
        };
        let prompt = "a corgi wearing a cowboy hat on the moon, watercolor painting";
        let plan = super::super::runtime()
            .unwrap()
            .block_on(stylus.select_with(prompt, options))
            .unwrap();
        let topics: Vec<&str> = plan.topics.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(
            topics,
            ["corgi", "cowboy hat", "moon", "watercolor painting"]
        );
        let titles = |t: usize| -> Vec<&str> {
            plan.topics[t]
                .adapters
                .iter()
                .map(|a| a.title.as_str())
                .collect()
        };
        assert_eq!(titles(0), ["Corgi Dog"]);
        assert_eq!(titles(1), ["Cowboy Hat"]);
        assert_eq!(plan.masks.len(), 3);
        assert!(
            plan.a1111_prompt
                .starts_with(&format!("{prompt}, realistic, best quality <lora:"))
        );
        let json = serde_json::to_value(&plan).unwrap();
        for key in ["prompt", "topics", "masks", "a1111_prompt", "timings_ms"] {
            assert!(json.get(key).is_some(), "{key}");
        }
        let adapter = &json["topics"][0]["adapters"][0];
        for key in [
            "id",
            "title",
            "alias",
            "weight",
            "category",
            "trigger_words",
        ] {
            assert!(adapter.get(key).is_some(), "{key}");
        }
        assert!(build(&args("x"), &config, MaskStrategy::All).is_ok());
        // Composer and mask names are enums: a wrong one is a usage error before anything opens.
        use clap::ValueEnum;
        assert!(ComposerKind::from_str("gpt", true).is_err());
        assert!(MaskStrategy::from_str("some", true).is_err());
    }

    /// The README's prompt under each retrieval mode, with the paper's budget (3 per topic, no
    /// cap per prompt): the generic riding pose but never the horse-riding adapter for "riding"
    /// (a cat is ridden), cat adapters for "cat", falling rain (not an umbrella or a rainy
    /// street) for "rain", the watercolor style for "watercolor". Whether a weaker fit ("Falling
    /// Rain" far down a BM25 ranking) clears the relevance threshold depends on the mode; the
    /// rules do not.
    #[test]
    fn the_readme_prompt_gets_no_narrower_adapters_in_any_retrieval_mode() {
        let allowed: [(&str, &[&str]); 5] = [
            ("man", &[]),
            ("riding", &["Riding Pose"]),
            ("cat", &["Tabby Cat", "Fluffy Cats"]),
            ("rain", &["Falling Rain"]),
            ("watercolor", &["Soft Watercolor Wash"]),
        ];
        for mode in [
            RetrievalMode::Dense,
            RetrievalMode::Bm25,
            RetrievalMode::Hybrid,
            RetrievalMode::Auto,
        ] {
            let mut config = StylusConfig::default();
            config.retriever.mode = mode;
            config.composer.max_adapters_per_topic = 3;
            config.composer.max_adapters = usize::MAX;
            let (stylus, _) = build(&args("x"), &config, MaskStrategy::All).unwrap();
            let plan = super::super::runtime()
                .unwrap()
                .block_on(stylus.select("a man riding a cat in the rain, watercolor"))
                .unwrap();
            let got: Vec<(&str, Vec<&str>)> = plan
                .topics
                .iter()
                .map(|t| {
                    let titles = t.adapters.iter().map(|a| a.title.as_str()).collect();
                    (t.text.as_str(), titles)
                })
                .collect();
            assert_eq!(got.len(), allowed.len(), "{mode:?}: {got:?}");
            for ((topic, titles), (want_topic, want)) in got.iter().zip(allowed) {
                assert_eq!(*topic, want_topic, "{mode:?}");
                assert!(
                    titles.iter().all(|t| want.contains(t)),
                    "{mode:?}: {topic:?} got {titles:?}"
                );
            }
            // The strong fits are there in every mode.
            assert_eq!(got[1].1, ["Riding Pose"], "{mode:?}");
            assert!(!got[2].1.is_empty(), "{mode:?}");
            assert_eq!(got[4].1, ["Soft Watercolor Wash"], "{mode:?}");
        }
    }

    /// The default budget on the README's prompt: the three most relevant adapters that fit a
    /// topic (`stylus_composer::relevance`): two animals for the cat (the masks spread them over
    /// the batch) and the style the prompt names; no person, nothing for "riding" or "rain".
    #[test]
    fn the_readme_prompt_gets_its_cat_and_style_adapters_by_default() {
        let config = StylusConfig::default();
        let (stylus, _) = build(&args("x"), &config, MaskStrategy::All).unwrap();
        let plan = super::super::runtime()
            .unwrap()
            .block_on(stylus.select("a man riding a cat in the rain, watercolor"))
            .unwrap();
        let picked: Vec<&str> = plan
            .topics
            .iter()
            .flat_map(|t| t.adapters.iter().map(|a| a.title.as_str()))
            .collect();
        assert_eq!(picked, ["Tabby Cat", "Fluffy Cats", "Soft Watercolor Wash"]);
    }
}
