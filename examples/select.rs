//! Select adapters from a library with nothing but the facade: open a StylusDocs store (or the
//! bundled catalog) as `stylus select --index DIR` does, with the config's composer settings and
//! mask strategy, and print the plan.
//!
//! ```text
//! cargo run --example select -- [STORE_DIR|-] "a corgi wearing a cowboy hat, watercolor"
//! ```

use stylus::{Source, Stylus, StylusConfig};

#[tokio::main]
async fn main() -> stylus::Result<()> {
    let mut args = std::env::args().skip(1);
    let source = match args.next().filter(|dir| dir != "-") {
        Some(dir) => Source::Store(dir.into()),
        None => Source::Bundled,
    };
    let prompt = args
        .next()
        .unwrap_or("a corgi in a cowboy hat, watercolor painting".into());
    let stylus = Stylus::open(source, &StylusConfig::default())?;
    let plan = stylus.select(&prompt).await?;
    for topic in &plan.topics {
        let titles: Vec<&str> = topic.adapters.iter().map(|a| a.title.as_str()).collect();
        println!("{:<24} {}", topic.text, titles.join(", "));
    }
    println!("{} mask(s); {}", plan.masks.len(), plan.a1111_prompt);
    Ok(())
}
