//! Characters, celebrities and real people. Both composers use such an adapter only when the
//! prompt asks for it (`ComposerConfig::block_characters`); this is that one rule, so the local
//! and the LLM composer agree on it.

use stylus_core::AdapterDoc;

/// Characters, celebrities, and cards Civitai flags as a real person ("person of interest").
pub fn is_person(doc: &AdapterDoc) -> bool {
    doc.category.is_person() || doc.card.poi
}

/// True when the prompt (its lower-cased words, in order) asks for this character or person: it
/// uses a word like "character" or "celebrity", or it names the adapter: one of its trigger
/// words, or the name in its title (see [`title_name`]), appears in the prompt as a run of words.
pub fn asks_for(prompt_words: &[String], doc: &AdapterDoc) -> bool {
    if prompt_words
        .iter()
        .any(|w| PERSON_WORDS.contains(&w.as_str()))
    {
        return true;
    }
    let contains_run = |run: &[String]| {
        !run.is_empty() && prompt_words.windows(run.len()).any(|window| window == run)
    };
    contains_run(&title_name(&doc.card.title))
        || doc
            .card
            .trigger_words
            .iter()
            .any(|t| contains_run(&lower_words(t)))
}

/// Words with which a prompt asks for some character or person without naming one.
const PERSON_WORDS: [&str; 6] = [
    "character",
    "characters",
    "celebrity",
    "celebrities",
    "cosplay",
    "cosplayer",
];

/// The name in an adapter title: bracketed parts dropped ("[LoCon]", "(v2)"), run-together
/// capitalized words split ("EdobHorse" -> "Edob Horse"), then the first part before `|`, `:`,
/// `,` or a spaced dash ("Name - by author"; a hyphen inside a word like "MX-5" or "Thigh-High"
/// does not cut) that has a name word left once words like "LoRA", "character" or version
/// numbers are removed.
pub fn title_name(title: &str) -> Vec<String> {
    let mut plain = String::with_capacity(title.len() + 8);
    let mut depth = 0usize;
    let chars: Vec<char> = title.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ if depth == 0 => {
                let starts_word = c.is_uppercase()
                    && i > 0
                    && chars[i - 1].is_lowercase()
                    && chars.get(i + 1).is_some_and(|n| n.is_lowercase());
                if starts_word {
                    plain.push(' ');
                }
                plain.push(c);
            }
            _ => {}
        }
    }
    let plain = plain
        .replace(" - ", "|")
        .replace(" \u{2013} ", "|")
        .replace(" \u{2014} ", "|");
    plain
        .split(['|', ':', ','])
        .map(|part| {
            lower_words(part)
                .into_iter()
                .filter(|w| !is_title_noise(w))
                .collect::<Vec<_>>()
        })
        .find(|name| !name.is_empty())
        .unwrap_or_default()
}

/// Words in adapter titles that are not part of a name.
fn is_title_noise(word: &str) -> bool {
    const NOISE: [&str; 17] = [
        "lora",
        "locon",
        "lycoris",
        "loha",
        "lokr",
        "dora",
        "character",
        "celebrity",
        "sd",
        "sd15",
        "sdxl",
        "xl",
        "style",
        "model",
        "outfit",
        "costume",
        "version",
    ];
    NOISE.contains(&word)
        || (word.starts_with('v')
            && word.len() > 1
            && word[1..].chars().all(|c| c.is_ascii_digit() || c == '.'))
        || word.chars().all(|c| c.is_ascii_digit())
}

/// Lower-cased words: runs of letters and digits.
pub fn lower_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_names_skip_brackets_versions_and_lora_words() {
        assert_eq!(
            title_name("[LoCon] Aria Vexley | original"),
            ["aria", "vexley"]
        );
        assert_eq!(title_name("Aria Vexley (v2) - LoRA"), ["aria", "vexley"]);
        assert_eq!(title_name("LoRA | Captain Nemo v1.5"), ["captain", "nemo"]);
        assert!(title_name("[v3]").is_empty());
        assert_eq!(title_name("EdobHorse"), ["edob", "horse"]);
        assert_eq!(
            title_name("MAZDA MX-5 NA car LORA"),
            ["mazda", "mx", "na", "car"]
        );
        assert_eq!(
            title_name("Stripey Thigh-High Socks LoRA"),
            ["stripey", "thigh", "high", "socks"]
        );
    }
}
