//! Prompt segmentation: cuts a prompt into keyword topics without a language model.
//!
//! A small rule-based chunker over closed word classes. Determiners, quantities, prepositions,
//! conjunctions and auxiliaries end a phrase and are dropped; what is left between them are noun
//! phrases with their modifiers ("yellow tiger", "Statue of Liberty"), verbs ("riding",
//! "sits"), and quoted text. Phrases after "in the style of" and phrases about the medium
//! ("oil painting", "pop art style") are style topics; the object of "in"/"at"/"during" that names
//! a time, weather or place ("night", "rain", "forest") is a setting. Every topic's text is a
//! contiguous slice of the prompt, so it appears in the prompt exactly as written.
//!
//! The reference Stylus composer (an LLM) cuts Parti prompts into short noun phrases without
//! articles; the rules follow that shape (measured by `crate::segmentation_eval`).

/// What a topic is about; guides which adapter categories fit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    /// A thing: a noun phrase with its modifiers.
    Thing,
    /// An action: a verb ("riding", "jumping").
    Action,
    /// An art style or medium ("oil painting", "in the style of Van Gogh").
    Style,
    /// A time, weather or place the scene is set in ("at night", "in the rain").
    Setting,
    /// Text quoted in the prompt (signs, captions).
    Quote,
}

/// One topic cut from a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The topic as it appears in the prompt: `prompt[start..end]`.
    pub text: String,
    /// Byte range in the prompt.
    pub start: usize,
    pub end: usize,
    pub kind: SegmentKind,
}

/// A word of the prompt.
#[derive(Debug, Clone)]
struct Token {
    lower: String,
    start: usize,
    end: usize,
    /// Starts with an upper-case letter.
    capitalized: bool,
    /// Punctuation (other than in-word `'`/`-`) separates it from the previous word.
    break_before: bool,
}

/// True for a Civitai-style tag list ("1girl, solo, long hair, smile, outdoors"): at least five
/// comma-separated parts, at least 80% of them three words or shorter; or a short one ("tina,
/// beautiful, face"): at least three parts, all that short; or a piece of one, which begins or
/// ends with a comma (", zerg", "FrostNova,"). 92% of the Civitai sample prompts are tag lists
/// by this rule and none of the 1,632 PartiPrompts captions (whose lists of things have longer
/// parts: "a blue hat, red gloves, green shirt, and yellow pants").
pub fn is_tag_list(prompt: &str) -> bool {
    let trimmed = prompt.trim();
    if trimmed.chars().any(char::is_alphanumeric)
        && (trimmed.starts_with(',') || trimmed.ends_with(','))
    {
        return true;
    }
    let parts: Vec<usize> = prompt
        .split(',')
        .map(|part| part.split_whitespace().count())
        .filter(|&words| words > 0)
        .collect();
    let short = parts.iter().filter(|&&words| words <= 3).count();
    (parts.len() >= 5 && short * 5 >= parts.len() * 4) || (parts.len() >= 3 && short == parts.len())
}

/// Cuts `prompt` into topics, in prompt order.
pub fn segment(prompt: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    // Quoted text is one topic; the rest is chunked piece by piece.
    let mut rest_start = 0;
    for (open, close) in quotes(prompt) {
        chunk(prompt, rest_start, open, &mut out);
        // The opening quote mark may be several bytes (curly quotes).
        let inner_start = open + prompt[open..].chars().next().map_or(1, char::len_utf8);
        let raw = &prompt[inner_start..close];
        let inner = raw.trim();
        if !inner.is_empty() {
            let start = inner_start + (raw.len() - raw.trim_start().len());
            out.push(Segment {
                text: inner.to_string(),
                start,
                end: start + inner.len(),
                kind: SegmentKind::Quote,
            });
        }
        rest_start = close + prompt[close..].chars().next().map_or(1, char::len_utf8);
    }
    chunk(prompt, rest_start, prompt.len(), &mut out);
    dedup(out)
}

/// Byte positions of the opening and closing quote of each `"..."` pair.
fn quotes(prompt: &str) -> Vec<(usize, usize)> {
    let marks: Vec<usize> = prompt
        .char_indices()
        .filter(|&(_, c)| c == '"' || c == '\u{201c}' || c == '\u{201d}')
        .map(|(i, _)| i)
        .collect();
    marks
        .chunks_exact(2)
        .map(|pair| (pair[0], pair[1]))
        .collect()
}

/// A repeated topic ("the wombat ... the wombat") is listed once, at its first place.
fn dedup(segments: Vec<Segment>) -> Vec<Segment> {
    let mut seen = std::collections::HashSet::new();
    segments
        .into_iter()
        .filter(|s| seen.insert(s.text.to_lowercase()))
        .collect()
}

fn tokenize(prompt: &str, from: usize, to: usize) -> Vec<Token> {
    let text = &prompt[from..to];
    let mut tokens = Vec::new();
    let mut start: Option<usize> = None;
    let mut pending_break = false;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (k, &(i, c)) in chars.iter().enumerate() {
        let joiner = matches!(c, '\'' | '\u{2019}' | '-' | '&');
        let inside_word = joiner
            && start.is_some()
            && chars.get(k + 1).is_some_and(|&(_, n)| n.is_alphanumeric());
        if c.is_alphanumeric() || inside_word {
            if start.is_none() {
                start = Some(i);
            }
            continue;
        }
        if let Some(s) = start.take() {
            tokens.push(make_token(text, from, s, i, pending_break));
            pending_break = false;
        }
        if !c.is_whitespace() {
            pending_break = true;
        }
    }
    if let Some(s) = start {
        tokens.push(make_token(text, from, s, text.len(), pending_break));
    }
    tokens
}

fn make_token(text: &str, offset: usize, s: usize, e: usize, break_before: bool) -> Token {
    let word = &text[s..e];
    Token {
        lower: word.to_lowercase().replace('\u{2019}', "'"),
        start: offset + s,
        end: offset + e,
        capitalized: word.chars().next().is_some_and(char::is_uppercase),
        break_before,
    }
}

/// How the chunker treats a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Part of a noun phrase.
    Content,
    /// Ends the phrase; dropped (articles, numbers, quantities).
    Determiner,
    /// Ends the phrase; dropped; the next phrase is its object.
    Preposition,
    /// Ends the phrase; dropped (conjunctions, auxiliaries, pronouns).
    Function,
    /// A verb: its own action topic.
    Verb,
    /// Dropped without ending the phrase (adverbs like "very").
    Skip,
}

/// Chunks `prompt[from..to]` (no quotes inside) and appends its topics.
fn chunk(prompt: &str, from: usize, to: usize, out: &mut Vec<Segment>) {
    if from >= to {
        return;
    }
    let tokens = tokenize(prompt, from, to);
    let roles = roles(&tokens);
    let mut phrase: Vec<usize> = Vec::new();
    // The preposition that introduced the current phrase, and whether "style of" did.
    let mut intro: Option<&str> = None;
    let mut style_intro = false;
    let mut i = 0;
    while i < tokens.len() {
        let token = &tokens[i];
        if token.break_before && !phrase.is_empty() {
            emit(prompt, &tokens, &phrase, intro, style_intro, out);
            phrase.clear();
        }
        if token.break_before {
            intro = None;
            style_intro = false;
        }
        match roles[i] {
            Role::Content => phrase.push(i),
            Role::Skip => {}
            Role::Verb => {
                emit(prompt, &tokens, &phrase, intro, style_intro, out);
                phrase.clear();
                let mut end = i;
                // Particles stay with their verb ("standing up", "taking off").
                while end + 1 < tokens.len()
                    && !tokens[end + 1].break_before
                    && PARTICLES.contains(&tokens[end + 1].lower.as_str())
                    && next_is_boundary(&tokens, &roles, end + 2)
                {
                    end += 1;
                }
                // Only verbs that name a pose or an activity are topics; "wearing", "holding",
                // "made", "written" only link the things around them.
                if is_action(&token.lower) {
                    push(
                        prompt,
                        tokens[i].start,
                        tokens[end].end,
                        SegmentKind::Action,
                        out,
                    );
                }
                intro = None;
                style_intro = false;
                i = end;
            }
            Role::Determiner | Role::Function => {
                emit(prompt, &tokens, &phrase, intro, style_intro, out);
                phrase.clear();
                if roles[i] == Role::Function {
                    intro = None;
                    style_intro = false;
                }
            }
            Role::Preposition => {
                // "of" inside a name ("Statue of Liberty", "Arc de Triomphe") keeps the phrase.
                let inside_name = token.lower == "of"
                    && phrase.last().is_some_and(|&p| tokens[p].capitalized)
                    && tokens
                        .get(i + 1)
                        .is_some_and(|n| n.capitalized && !n.break_before && n.lower != "the");
                if inside_name {
                    phrase.push(i);
                } else {
                    let was_style = phrase.len() == 1 && tokens[phrase[0]].lower == "style";
                    if !was_style {
                        emit(prompt, &tokens, &phrase, intro, style_intro, out);
                    }
                    phrase.clear();
                    style_intro = was_style && token.lower == "of";
                    intro = Some(
                        PREPOSITIONS
                            .iter()
                            .find(|p| **p == token.lower)
                            .copied()
                            .unwrap_or("of"),
                    );
                }
            }
        }
        i += 1;
    }
    emit(prompt, &tokens, &phrase, intro, style_intro, out);
}

/// A particle ends its verb's phrase only when no object follows ("standing up." but not
/// "jumping over a fence").
fn next_is_boundary(tokens: &[Token], roles: &[Role], at: usize) -> bool {
    at >= tokens.len()
        || tokens[at].break_before
        || matches!(roles[at], Role::Function | Role::Verb)
}

/// Turns a finished noun phrase into a topic unless it is only a placeholder word.
fn emit(
    prompt: &str,
    tokens: &[Token],
    phrase: &[usize],
    intro: Option<&str>,
    style_intro: bool,
    out: &mut Vec<Segment>,
) {
    let (Some(&first), Some(&last)) = (phrase.first(), phrase.last()) else {
        return;
    };
    let words: Vec<&str> = phrase.iter().map(|&p| tokens[p].lower.as_str()).collect();
    if words.iter().all(|w| PLACEHOLDERS.contains(w)) {
        return;
    }
    // "a photo of X": a bare photo is the default of the base model, not a topic.
    if words.len() == 1 && PLAIN_MEDIA.contains(&words[0]) {
        return;
    }
    let head = *words.last().unwrap_or(&"");
    // "in the background", "on top": positions, not things.
    if intro.is_some() && words.len() == 1 && POSITIONS.contains(&head) {
        return;
    }
    let kind = if style_intro || is_style_phrase(&words) {
        SegmentKind::Style
    } else if matches!(intro, Some("in" | "at" | "during" | "under"))
        && SETTING_WORDS.contains(&head)
    {
        SegmentKind::Setting
    } else {
        SegmentKind::Thing
    };
    push(prompt, tokens[first].start, tokens[last].end, kind, out);
}

fn push(prompt: &str, start: usize, end: usize, kind: SegmentKind, out: &mut Vec<Segment>) {
    out.push(Segment {
        text: prompt[start..end].to_string(),
        start,
        end,
        kind,
    });
}

fn is_style_phrase(words: &[&str]) -> bool {
    let head = *words.last().unwrap_or(&"");
    head == "style" || words.iter().any(|w| STYLE_WORDS.contains(w)) || MEDIUM_HEADS.contains(&head)
}

/// The role of every token, looking at its neighbours where a word class is ambiguous.
fn roles(tokens: &[Token]) -> Vec<Role> {
    let mut roles: Vec<Role> = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.iter().enumerate() {
        let w = token.lower.as_str();
        let prev = roles.last().copied();
        let next_content = tokens.get(i + 1).is_some_and(|n| {
            !n.break_before && base_role(&n.lower) == Role::Content && !is_verb_form(&n.lower)
        });
        let mut role = base_role(w);
        if role == Role::Content && is_verb_form(w) {
            let phrase_start = token.break_before
                || matches!(prev, None | Some(Role::Determiner | Role::Preposition));
            role = if w.ends_with("ing") {
                // "a smiling sloth": a participle right before its noun is a modifier.
                if phrase_start && next_content {
                    Role::Content
                } else {
                    Role::Verb
                }
            } else if !phrase_start {
                // "the cat sits", "a tree covered in snow", "is written": a verb. After an
                // article it is a modifier ("a stuffed animal").
                Role::Verb
            } else {
                Role::Content
            };
        }
        // A past form we do not know after its noun, with no noun after it, is a verb: "the
        // horse raced past", "a road ruined by", "a stop sign knocked over". Before a noun it is
        // a modifier ("a large striped cat").
        if role == Role::Content
            && !matches!(prev, None | Some(Role::Determiner | Role::Preposition))
            && !token.break_before
            && is_past_form(w)
            && tokens
                .get(i + 1)
                .is_none_or(|n| n.break_before || base_role(&n.lower) != Role::Content)
        {
            role = Role::Verb;
        }
        // A past participle with no noun after it is a verb even where a phrase starts: the
        // words "Hello" written on it, "made of glass". Before a noun it describes it ("a
        // painted fence").
        if role == Role::Content
            && (is_past_form(w)
                || IRREGULAR_PAST.iter().any(|(form, _)| *form == w)
                || w.ends_with("ed") && verb_lemma(w).is_some())
            && tokens
                .get(i + 1)
                .is_none_or(|n| n.break_before || base_role(&n.lower) == Role::Preposition)
        {
            role = Role::Verb;
        }
        // A number inside a name or model ("F1", "1997 Corvette") stays content; a count does not.
        if role == Role::Content && w.chars().all(|c| c.is_ascii_digit()) && next_content {
            role = Role::Determiner;
        }
        // "a pair of", "a group of": quantity nouns before "of" are determiners.
        if role == Role::Content
            && QUANTITY_NOUNS.contains(&w)
            && tokens.get(i + 1).is_some_and(|n| n.lower == "of")
        {
            role = Role::Determiner;
        }
        // "of" right after a quantity noun is part of the determiner.
        if w == "of"
            && prev == Some(Role::Determiner)
            && i > 0
            && QUANTITY_NOUNS.contains(&tokens[i - 1].lower.as_str())
        {
            role = Role::Determiner;
        }
        roles.push(role);
    }
    roles
}

fn base_role(w: &str) -> Role {
    if DETERMINERS.contains(&w) || w.chars().all(|c| c.is_ascii_digit()) && w.len() <= 2 {
        Role::Determiner
    } else if PREPOSITIONS.contains(&w) {
        Role::Preposition
    } else if FUNCTION_WORDS.contains(&w) || FINITE_VERBS.contains(&w) || w.ends_with("n't") {
        Role::Function
    } else if ADVERBS.contains(&w) || (w.len() > 5 && w.ends_with("ly") && !LY_NOUNS.contains(&w)) {
        Role::Skip
    } else {
        Role::Content
    }
}

/// An inflected verb form (`-ing`, `-ed`, `-s`) of a verb we know, or any `-ing` word that is not
/// a known noun.
fn is_verb_form(w: &str) -> bool {
    if let Some(stem) = w.strip_suffix("ing") {
        return stem.len() >= 2 && !ING_NOUNS.contains(&w);
    }
    verb_lemma(w).is_some_and(|lemma| VERBS.contains(&lemma.as_str()))
}

/// An `-ed` word that looks like a past form: five letters or more, not `-eed` ("steed",
/// "tweed") nor a compound of "bed" ("seabed", "flowerbed").
fn is_past_form(w: &str) -> bool {
    w.len() >= 5
        && w.ends_with("ed")
        && !w.ends_with("eed")
        && (!w.ends_with("bed") || w.ends_with("bbed"))
        && w.chars().all(|c| c.is_ascii_lowercase())
}

/// True for `-ing` forms of verbs that name a pose or an activity ("jumping", "sitting").
fn is_action(w: &str) -> bool {
    let Some(stem) = w.strip_suffix("ing") else {
        return false;
    };
    let undoubled = undouble(stem);
    let with_e = format!("{stem}e");
    let unlied =
        (stem == "ly" || stem.ends_with("y")).then(|| format!("{}ie", &stem[..stem.len() - 1]));
    [
        Some(stem),
        undoubled,
        Some(with_e.as_str()),
        unlied.as_deref(),
    ]
    .into_iter()
    .flatten()
    .any(|lemma| ACTIONS.contains(&lemma))
}

/// A stem that ends in a doubled letter without its last one ("swimm" -> "swim"). Works on
/// characters, not bytes: prompt words are any script ("丸丸ed").
fn undouble(stem: &str) -> Option<&str> {
    let mut chars = stem.char_indices().rev();
    let (last_at, last) = chars.next()?;
    let (_, before) = chars.next()?;
    (chars.next().is_some() && last == before).then(|| &stem[..last_at])
}

/// Candidate lemma of an `-s` / `-es` / `-ed` / irregular past form.
fn verb_lemma(w: &str) -> Option<String> {
    if let Some(&(_, lemma)) = IRREGULAR_PAST.iter().find(|(form, _)| *form == w) {
        return Some(lemma.to_string());
    }
    for (suffix, replacement) in [
        ("ies", "y"),
        ("ied", "y"),
        ("es", ""),
        ("ed", "e"),
        ("ed", ""),
        ("s", ""),
    ] {
        if let Some(stem) = w.strip_suffix(suffix) {
            let lemma = format!("{stem}{replacement}");
            if VERBS.contains(&lemma.as_str()) {
                return Some(lemma);
            }
            // Doubled consonant: "wrapped" -> "wrap".
            if suffix == "ed"
                && replacement.is_empty()
                && let Some(lemma) = undouble(stem).filter(|lemma| VERBS.contains(lemma))
            {
                return Some(lemma.to_string());
            }
        }
    }
    None
}

const DETERMINERS: &[&str] = &[
    "a",
    "an",
    "the",
    "this",
    "that",
    "these",
    "those",
    "some",
    "any",
    "each",
    "every",
    "its",
    "his",
    "her",
    "their",
    "my",
    "your",
    "our",
    "no",
    "another",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "twenty",
    "hundred",
    "hundreds",
    "thousand",
    "thousands",
    "dozen",
    "dozens",
    "several",
    "many",
    "few",
    "multiple",
    "both",
    "all",
    "lots",
    "various",
    "numerous",
    "much",
    "more",
    "most",
    "other",
    "such",
];

const PREPOSITIONS: &[&str] = &[
    "in",
    "on",
    "at",
    "with",
    "of",
    "by",
    "for",
    "from",
    "to",
    "into",
    "onto",
    "over",
    "under",
    "above",
    "below",
    "beneath",
    "behind",
    "beside",
    "besides",
    "between",
    "near",
    "inside",
    "outside",
    "through",
    "across",
    "around",
    "along",
    "against",
    "among",
    "amongst",
    "toward",
    "towards",
    "without",
    "atop",
    "upon",
    "about",
    "like",
    "during",
    "via",
    "within",
    "underneath",
    "past",
    "beyond",
    "versus",
    "vs",
    "after",
    "before",
    "until",
    "except",
    "instead",
    "next",
    "off",
    "out",
    "up",
    "down",
    "away",
];

const FUNCTION_WORDS: &[&str] = &[
    "and",
    "or",
    "but",
    "nor",
    "while",
    "as",
    "which",
    "who",
    "whom",
    "whose",
    "where",
    "when",
    "whereas",
    "because",
    "so",
    "than",
    "then",
    "there",
    "here",
    "it",
    "they",
    "them",
    "he",
    "she",
    "him",
    "we",
    "us",
    "you",
    "i",
    "me",
    "itself",
    "themselves",
    "himself",
    "herself",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "am",
    "has",
    "have",
    "had",
    "do",
    "does",
    "did",
    "can",
    "could",
    "will",
    "would",
    "should",
    "may",
    "might",
    "must",
    "not",
    "also",
    "if",
    "whether",
    "what",
    "how",
    "why",
    "either",
    "neither",
    "yet",
    "though",
    "although",
    "whom",
    "let's",
    "it's",
    "there's",
    "that's",
    "isn't",
    "aren't",
    "doesn't",
    "don't",
];

/// Verbs that introduce text or a picture ("a sign that says ..."): no topic of their own.
const FINITE_VERBS: &[&str] = &["says", "said", "saying", "reads", "shows", "showing"];

/// Verb lemmas whose `-s`/`-ed` forms end a noun phrase ("the cat sits").
const VERBS: &[&str] = &[
    "sit", "stand", "hold", "wear", "ride", "look", "run", "walk", "fly", "jump", "play", "eat",
    "drink", "read", "lie", "lay", "hang", "shine", "peer", "sleep", "swim", "say", "contain",
    "appear", "lean", "grow", "float", "cover", "stare", "wait", "smile", "carry", "chase", "sing",
    "dance", "fight", "climb", "kick", "throw", "catch", "hug", "kiss", "watch", "write", "paint",
    "draw", "make", "pour", "fall", "dream", "escape", "bite", "surround", "cross", "dress",
    "park", "shroud", "situate", "place", "fill", "make", "build", "carve", "decorate", "print",
    "wrap", "stack", "scatter", "tip", "melt", "swarm", "echo", "depict", "imagine", "use", "sip",
    "perch", "rest", "reflect", "light", "cast", "drive", "stick", "spill", "rise", "set", "sail",
    "bow", "lick", "crawl", "splash", "glow", "wave", "point", "face", "bake", "cook", "chop",
    "slice", "sew", "knit", "hide", "peek", "emerge", "attach", "tie", "seat", "mount", "top",
    "line", "paint", "frame", "shape", "form", "trail", "lead", "follow", "help", "keep", "take",
    "give", "get", "put", "see", "tell", "try", "turn", "want", "become", "seem",
];

/// Poses and activities: their `-ing` forms are action topics ("a cat jumping").
const ACTIONS: &[&str] = &[
    "sit",
    "stand",
    "jump",
    "smile",
    "fly",
    "read",
    "eat",
    "fight",
    "run",
    "walk",
    "dance",
    "swim",
    "sleep",
    "ride",
    "play",
    "sob",
    "cry",
    "laugh",
    "sing",
    "write",
    "pour",
    "chase",
    "surround",
    "pose",
    "sniff",
    "kiss",
    "hug",
    "climb",
    "meditate",
    "dream",
    "surf",
    "skate",
    "ski",
    "kneel",
    "lie",
    "crawl",
    "dive",
    "fish",
    "cook",
    "drink",
    "shout",
    "scream",
    "yell",
    "roar",
    "leap",
    "breach",
    "hatch",
    "spin",
    "kick",
    "pray",
    "yawn",
    "stretch",
    "squat",
    "crouch",
    "bathe",
    "skateboard",
    "snowboard",
    "wrestle",
    "box",
    "juggle",
    "knit",
    "sew",
    "bake",
    "garden",
    "hike",
    "jog",
    "sail",
    "row",
    "paddle",
    "drive",
    "wink",
    "kneel",
    "battle",
    "charge",
    "attack",
    "roll",
    "rain",
    "snow",
    "explode",
    "erupt",
    "burn",
    "melt",
    "float",
    "fall",
];

/// Verbs' irregular past forms (the participles a prompt uses as modifiers of a noun).
const IRREGULAR_PAST: &[(&str, &str)] = &[
    ("sat", "sit"),
    ("stood", "stand"),
    ("held", "hold"),
    ("wore", "wear"),
    ("worn", "wear"),
    ("rode", "ride"),
    ("ran", "run"),
    ("flew", "fly"),
    ("ate", "eat"),
    ("drank", "drink"),
    ("hung", "hang"),
    ("shone", "shine"),
    ("slept", "sleep"),
    ("swam", "swim"),
    ("grew", "grow"),
    ("sang", "sing"),
    ("fought", "fight"),
    ("caught", "catch"),
    ("wrote", "write"),
    ("written", "write"),
    ("drew", "draw"),
    ("drawn", "draw"),
    ("made", "make"),
    ("fell", "fall"),
    ("bit", "bite"),
    ("bitten", "bite"),
    ("built", "build"),
    ("lit", "light"),
    ("drove", "drive"),
    ("stuck", "stick"),
    ("rose", "rise"),
    ("hidden", "hide"),
    ("led", "lead"),
    ("kept", "keep"),
    ("took", "take"),
    ("taken", "take"),
    ("gave", "give"),
    ("got", "get"),
    ("seen", "see"),
    ("saw", "see"),
    ("told", "tell"),
    ("became", "become"),
];

/// `-ing` words that are nouns.
const ING_NOUNS: &[&str] = &[
    "painting",
    "paintings",
    "drawing",
    "drawings",
    "building",
    "buildings",
    "ceiling",
    "king",
    "ring",
    "wing",
    "thing",
    "evening",
    "morning",
    "string",
    "clothing",
    "pudding",
    "wedding",
    "spring",
    "swing",
    "sibling",
    "duckling",
    "earring",
    "icing",
    "frosting",
    "bling",
    "sling",
    "stuffing",
    "lightning",
    "railing",
    "lining",
    "awning",
    "dumpling",
    "sapling",
    "offspring",
    "viking",
    "beijing",
    "nothing",
    "something",
    "anything",
    "everything",
    "ping",
    "sing",
    "bring",
    "sting",
    "wring",
    "ling",
    "ding",
    "zing",
    "ming",
    "pring",
    "engraving",
    "carving",
    "landing",
    "living",
    "dining",
    "sewing",
    "recycling",
    "bathing",
    "jogging",
    "boxing",
    "meeting",
    "learning",
    "feeling",
    "meaning",
    "rendering",
    "lettering",
    "shading",
    "lighting",
    "setting",
    "opening",
    "clearing",
    "crossing",
    "parking",
    "pudding",
    "stocking",
    "stockings",
    "herring",
    "darling",
    "pudding",
    "inkling",
    "tiling",
    "siding",
    "rigging",
    "roofing",
    "flooring",
    "ceilings",
    "wings",
    "rings",
    "kings",
    "things",
    "strings",
];

/// `-ly` words that are not adverbs.
const LY_NOUNS: &[&str] = &[
    "family",
    "butterfly",
    "dragonfly",
    "firefly",
    "lily",
    "jelly",
    "belly",
    "holly",
    "bully",
    "italy",
    "assembly",
    "supply",
    "anomaly",
    "monopoly",
    "rally",
    "ally",
    "fly",
    "ugly",
    "lovely",
    "friendly",
    "curly",
    "fluffy",
    "early",
    "daily",
    "elderly",
    "lonely",
    "holy",
    "silly",
    "chilly",
    "hilly",
    "woolly",
    "wooly",
    "burly",
    "sly",
    "oily",
    "bubbly",
    "sparkly",
    "jolly",
    "comely",
    "costly",
    "deadly",
    "ghastly",
    "gnarly",
    "kindly",
    "likely",
    "lively",
    "manly",
    "portly",
    "saintly",
    "scaly",
    "smelly",
    "stately",
    "surly",
    "timely",
    "wobbly",
    "wrinkly",
    "prickly",
    "cuddly",
    "bodily",
    "grizzly",
    "rely",
    "reply",
    "apply",
    "mcnally",
];

const ADVERBS: &[&str] = &[
    "very",
    "just",
    "really",
    "quite",
    "too",
    "so",
    "almost",
    "nearly",
    "even",
    "still",
    "together",
    "also",
    "only",
    "rather",
    "somewhat",
    "extremely",
    "highly",
    "slightly",
    "partially",
    "fully",
    "well",
    "not",
];

/// Nouns that count things before "of" ("a pair of headphones").
const QUANTITY_NOUNS: &[&str] = &[
    "pair",
    "group",
    "bunch",
    "series",
    "couple",
    "set",
    "sets",
    "row",
    "rows",
    "pile",
    "stack",
    "lot",
    "herd",
    "flock",
    "number",
    "collection",
    "variety",
    "handful",
    "piece",
    "pieces",
    "kind",
    "type",
    "sort",
    "cluster",
    "swarm",
    "crowd",
    "team",
    "pack",
    "school",
    "bundle",
    "array",
    "plate",
    "bowl",
    "cup",
    "glass",
    "bottle",
    "box",
    "basket",
    "jar",
    "slice",
];

const PARTICLES: &[&str] = &["up", "down", "out", "off", "away", "around", "over", "back"];

/// Words that name nothing to draw on their own.
const PLACEHOLDERS: &[&str] = &[
    "thing",
    "things",
    "something",
    "someone",
    "somebody",
    "anything",
    "everything",
    "nothing",
    "one",
    "ones",
    "other",
    "others",
    "image",
    "picture",
    "way",
    "word",
    "words",
    "it",
    "lot",
    "kind",
    "sort",
    "type",
    "bit",
    "part",
    "left",
    "right",
    "saying",
    "word",
    "letters",
];

/// Media that need no adapter when named alone ("a photo of ...").
const PLAIN_MEDIA: &[&str] = &[
    "photo",
    "photograph",
    "photography",
    "picture",
    "pic",
    "image",
    "view",
    "close-up",
    "closeup",
    "portrait",
    "shot",
    "snapshot",
    "scene",
];

/// Words that name a position, not a thing, when a preposition introduces them.
const POSITIONS: &[&str] = &[
    "front",
    "top",
    "middle",
    "side",
    "sides",
    "bottom",
    "center",
    "centre",
    "left",
    "right",
    "back",
    "inside",
    "outside",
    "foreground",
    "background",
    "distance",
    "corner",
    "end",
    "edge",
    "rest",
    "way",
    "midst",
];

/// Words that make a phrase about style or medium.
const STYLE_WORDS: &[&str] = &[
    "watercolor",
    "watercolour",
    "anime",
    "manga",
    "cartoon",
    "comic",
    "pixel",
    "sketch",
    "impressionist",
    "impressionistic",
    "surrealist",
    "surrealism",
    "cubist",
    "cubism",
    "oil",
    "acrylic",
    "pastel",
    "charcoal",
    "ukiyo-e",
    "vaporwave",
    "cyberpunk",
    "steampunk",
    "lowpoly",
    "low-poly",
    "isometric",
    "graffiti",
    "pop",
    "minimalist",
    "baroque",
    "renaissance",
    "art",
    "deco",
    "nouveau",
    "stained",
];

/// Nouns that name a medium ("a photograph", "an illustration").
const MEDIUM_HEADS: &[&str] = &[
    "painting",
    "drawing",
    "illustration",
    "photo",
    "photograph",
    "photography",
    "sketch",
    "render",
    "rendering",
    "artwork",
    "art",
    "style",
    "poster",
    "print",
    "engraving",
    "woodcut",
    "mosaic",
    "portrait",
    "cartoon",
    "anime",
    "watercolor",
    "screenshot",
];

/// Heads that make an "in"/"at" phrase a setting.
const SETTING_WORDS: &[&str] = &[
    "night",
    "day",
    "dawn",
    "dusk",
    "sunset",
    "sunrise",
    "twilight",
    "morning",
    "evening",
    "afternoon",
    "rain",
    "snow",
    "fog",
    "mist",
    "storm",
    "wind",
    "winter",
    "summer",
    "autumn",
    "spring",
    "fall",
    "forest",
    "desert",
    "city",
    "beach",
    "field",
    "meadow",
    "jungle",
    "space",
    "sky",
    "ocean",
    "sea",
    "water",
    "street",
    "park",
    "garden",
    "room",
    "kitchen",
    "mountains",
    "snowstorm",
    "thunderstorm",
    "moonlight",
    "sunlight",
    "darkness",
    "background",
    "landscape",
    "countryside",
    "village",
    "town",
    "castle",
    "cave",
    "underwater",
    "clouds",
    "valley",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(prompt: &str) -> Vec<String> {
        segment(prompt).into_iter().map(|s| s.text).collect()
    }

    #[test]
    fn noun_phrases_keep_modifiers_and_drop_articles() {
        assert_eq!(
            texts("a yellow tiger with blue stripes"),
            ["yellow tiger", "blue stripes"]
        );
        assert_eq!(texts("A pair of headphones"), ["headphones"]);
        assert_eq!(texts("three small dogs"), ["small dogs"]);
    }

    #[test]
    fn actions_settings_and_styles_are_topics_with_kinds() {
        let segs = segment("a man riding a cat in the rain at night, watercolor painting");
        let got: Vec<(&str, SegmentKind)> =
            segs.iter().map(|s| (s.text.as_str(), s.kind)).collect();
        assert_eq!(
            got,
            [
                ("man", SegmentKind::Thing),
                ("riding", SegmentKind::Action),
                ("cat", SegmentKind::Thing),
                ("rain", SegmentKind::Setting),
                ("night", SegmentKind::Setting),
                ("watercolor painting", SegmentKind::Style),
            ]
        );
        let segs = segment("a tennis match in the style of Egyptian hieroglyphics");
        assert_eq!(segs.last().unwrap().text, "Egyptian hieroglyphics");
        assert_eq!(segs.last().unwrap().kind, SegmentKind::Style);
    }

    #[test]
    fn names_with_of_stay_whole_and_quotes_are_topics() {
        assert_eq!(
            texts("An oil painting of the Statue of Liberty"),
            ["oil painting", "Statue of Liberty"]
        );
        assert_eq!(
            texts("a sign that says \"Welcome Friends\" on a wall"),
            ["sign", "Welcome Friends", "wall"]
        );
    }

    #[test]
    fn participles_before_nouns_are_modifiers() {
        assert_eq!(texts("a smiling sloth"), ["smiling sloth"]);
        assert_eq!(texts("two violins standing up"), ["violins", "standing up"]);
        assert_eq!(texts("the cat sits on the mat"), ["cat", "mat"]);
        assert_eq!(texts("a cat jumping"), ["cat", "jumping"]);
    }

    #[test]
    fn a_past_form_after_its_noun_ends_the_phrase_and_before_a_noun_modifies_it() {
        // Past forms we do not list as verbs, followed by no noun: verbs, not part of the thing.
        assert_eq!(
            texts("a road ruined by an earthquake"),
            ["road", "earthquake"]
        );
        assert_eq!(texts("a stop sign knocked over"), ["stop sign"]);
        assert_eq!(texts("a snake curled around a post"), ["snake", "post"]);
        // Before a noun, or at the start of a phrase, they describe it.
        assert_eq!(texts("a large striped cat"), ["large striped cat"]);
        assert_eq!(texts("a wrecked car"), ["wrecked car"]);
        // Followed by a preposition, a participle is a verb where a phrase starts too; in a list
        // of adjectives it is one of them.
        assert_eq!(
            texts("happy, surprised and angry"),
            ["happy", "surprised", "angry"]
        );
        assert_eq!(
            texts("a book with the words \"Don't Panic\" written on it"),
            ["book", "Don't Panic"]
        );
        assert_eq!(
            texts("a tuba made of flower petals"),
            ["tuba", "flower petals"]
        );
        assert_eq!(texts("a painted fence"), ["painted fence"]);
        // Nouns in -eed and -bed are not past forms.
        assert_eq!(texts("a white steed"), ["white steed"]);
        assert_eq!(texts("a coral seabed"), ["coral seabed"]);
        // A negated auxiliary is a function word: "wasn't" is no part of a topic.
        assert_eq!(
            texts("the sculpture fell because it wasn't level"),
            ["sculpture", "level"]
        );
    }

    #[test]
    fn topics_are_slices_of_the_prompt_in_order_without_repeats() {
        let prompt =
            "A wombat sits in a yellow beach chair. The wombat is wearing a white panama hat.";
        let segs = segment(prompt);
        let mut last = 0;
        for s in &segs {
            assert_eq!(&prompt[s.start..s.end], s.text);
            assert!(s.start >= last);
            last = s.end;
        }
        assert_eq!(
            segs.iter()
                .filter(|s| s.text.eq_ignore_ascii_case("wombat"))
                .count(),
            1
        );
        assert!(segment("").is_empty());
        assert!(segment("  , . ").is_empty());
    }

    #[test]
    fn verb_forms_of_words_in_any_script_do_not_split_a_character() {
        for prompt in [
            "丸丸ed",
            "ッッing",
            "a 丸ed cat",
            "ッing in the rain",
            "éé",
            "ééing ééed",
        ] {
            for s in segment(prompt) {
                assert_eq!(&prompt[s.start..s.end], s.text);
            }
        }
        assert_eq!(undouble("丸丸丸"), Some("丸丸"));
        assert_eq!(undouble("swimm"), Some("swim"));
        assert_eq!(undouble("丸丸"), None);
    }

    #[test]
    fn tag_lists_are_told_from_sentences() {
        assert!(is_tag_list(
            "1girl, solo, long hair, smile, outdoors, masterpiece, best quality"
        ));
        assert!(!is_tag_list("a man walking his dog in the park"));
        assert!(!is_tag_list(
            "A smiling sloth wearing a leather jacket, a cowboy hat, a kilt and a bowtie"
        ));
        assert!(!is_tag_list(",,,,,"));
        // Three short parts are a tag list too; a caption's list of things is not.
        assert!(is_tag_list("tina, beautiful, face"));
        // A piece of a tag list begins or ends with a comma.
        assert!(is_tag_list(", zerg"));
        assert!(is_tag_list("FrostNova,"));
        assert!(!is_tag_list(","));
        assert!(!is_tag_list("tina, beautiful"));
        assert!(!is_tag_list(
            "a baby penguin wearing a blue hat, red gloves, green shirt, and yellow pants"
        ));
    }
}
