//! What the load generator sends: prompts made from a seed with a target
//! length, read from a JSONL file, or sharing a system prompt.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Small, fast, seedable generator (SplitMix64): workloads must be
/// reproducible from their seed, and need no statistical quality beyond that.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Common English words; each is about one token for BPE vocabularies, so a
/// prompt of N words is about N tokens.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "over",
    "new",
    "sound",
    "take",
    "only",
    "little",
    "work",
    "know",
    "place",
    "year",
    "live",
    "me",
    "back",
    "give",
    "most",
    "very",
    "after",
    "thing",
    "our",
    "just",
    "name",
    "good",
    "sentence",
    "man",
    "think",
    "say",
    "great",
    "where",
    "help",
    "through",
    "much",
    "before",
    "line",
    "right",
    "too",
    "mean",
    "old",
    "any",
    "same",
    "tell",
    "boy",
    "follow",
    "came",
    "want",
    "show",
    "also",
    "around",
    "form",
    "three",
    "small",
    "set",
    "put",
    "end",
    "does",
    "another",
    "well",
    "large",
    "must",
    "big",
    "even",
    "such",
    "because",
    "turn",
    "here",
    "why",
    "ask",
    "went",
    "men",
    "read",
    "need",
    "land",
    "different",
    "home",
    "us",
    "move",
    "try",
    "kind",
    "hand",
    "picture",
    "again",
    "change",
    "off",
    "play",
    "spell",
    "air",
    "away",
    "animal",
    "house",
    "point",
    "page",
    "letter",
    "mother",
    "answer",
    "found",
    "study",
    "still",
    "learn",
    "should",
    "world",
    "high",
    "every",
    "near",
    "add",
    "food",
    "between",
    "own",
    "below",
    "country",
    "plant",
    "last",
    "school",
    "father",
    "keep",
    "tree",
    "never",
    "start",
    "city",
    "earth",
    "eye",
    "light",
    "thought",
    "head",
    "under",
    "story",
    "saw",
];

/// Questions that open generated chat prompts, so the model has a task.
const TASKS: &[&str] = &[
    "Summarize the following notes in a few sentences:",
    "Explain what these words could be about:",
    "Write a short story inspired by these words:",
    "List the main ideas in this text:",
    "Rewrite this text as a clear paragraph:",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    Chat,
    Completions,
}

impl Api {
    pub fn path(self) -> &'static str {
        match self {
            Self::Chat => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
        }
    }
}

/// A system prompt shared by a fraction of requests, as in real chat traffic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SharedPrefix {
    pub words: usize,
    pub fraction: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptSpec {
    /// Mean prompt length in words (about tokens), before any template.
    pub mean_words: usize,
    /// Lengths are uniform in mean ± spread.
    pub spread_words: usize,
    pub shared_prefix: Option<SharedPrefix>,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prompt {
    /// System prompt (chat) or leading text (completions), when shared.
    pub system: Option<String>,
    pub user: String,
}

impl Prompt {
    /// The prompt as one text, for the completions API.
    pub fn as_text(&self) -> String {
        match &self.system {
            Some(system) => format!("{system}\n\n{}", self.user),
            None => self.user.clone(),
        }
    }
}

fn words(rng: &mut SplitMix64, count: usize) -> String {
    let mut text = String::with_capacity(count * 6);
    for i in 0..count {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(WORDS[rng.below(WORDS.len())]);
    }
    text
}

/// `count` prompts, the same for the same spec.
pub fn generate(spec: &PromptSpec, count: usize) -> Vec<Prompt> {
    let mut rng = SplitMix64::new(spec.seed);
    let shared_system = spec.shared_prefix.map(|prefix| {
        format!(
            "You are a helpful assistant. Context: {}.",
            words(&mut rng, prefix.words)
        )
    });
    (0..count)
        .map(|_| {
            let low = spec.mean_words.saturating_sub(spec.spread_words).max(1);
            let high = spec.mean_words + spec.spread_words;
            let length = low + rng.below(high - low + 1);
            let task = TASKS[rng.below(TASKS.len())];
            let user = format!("{task} {}", words(&mut rng, length));
            let system = match (&shared_system, spec.shared_prefix) {
                (Some(system), Some(prefix)) if rng.next_f64() < prefix.fraction => {
                    Some(system.clone())
                }
                _ => None,
            };
            Prompt { system, user }
        })
        .collect()
}

#[derive(Deserialize)]
struct PromptLine {
    #[serde(default)]
    system: Option<String>,
    #[serde(alias = "prompt")]
    user: String,
}

/// Reads prompts from JSONL: one `{"user": "...", "system": "..."}` (or
/// `{"prompt": "..."}`) per line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Prompt>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| {
            let parsed: PromptLine = serde_json::from_str(line)
                .map_err(|err| format!("{}:{}: {err}", path.display(), number + 1))?;
            Ok(Prompt {
                system: parsed.system,
                user: parsed.user,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shared: Option<SharedPrefix>) -> PromptSpec {
        PromptSpec {
            mean_words: 100,
            spread_words: 20,
            shared_prefix: shared,
            seed: 7,
        }
    }

    #[test]
    fn same_seed_same_prompts() {
        assert_eq!(generate(&spec(None), 5), generate(&spec(None), 5));
        let other = PromptSpec {
            seed: 8,
            ..spec(None)
        };
        assert_ne!(generate(&spec(None), 5), generate(&other, 5));
    }

    #[test]
    fn lengths_stay_within_the_spread() {
        for prompt in generate(&spec(None), 200) {
            let body_words = prompt.user.split_whitespace().count();
            // The task sentence adds up to 9 words.
            assert!((80..=129).contains(&body_words), "{body_words}");
        }
    }

    #[test]
    fn shared_prefix_goes_to_about_its_fraction() {
        let prompts = generate(
            &spec(Some(SharedPrefix {
                words: 50,
                fraction: 0.8,
            })),
            1000,
        );
        let shared: Vec<_> = prompts.iter().filter_map(|p| p.system.as_ref()).collect();
        assert!((740..=860).contains(&shared.len()), "{}", shared.len());
        assert!(shared.iter().all(|system| *system == shared[0]));
    }

    #[test]
    fn jsonl_prompts_are_read_with_line_numbers_in_errors() {
        let dir = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("prompts.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\": \"a\"}\n\n{\"user\": \"b\", \"system\": \"s\"}\n",
        )
        .unwrap();
        let prompts = read_jsonl(&path).unwrap();
        assert_eq!(prompts.len(), 2);
        assert_eq!(prompts[1].as_text(), "s\n\nb");
        std::fs::write(&path, "{\"prompt\": \"a\"}\nnot json\n").unwrap();
        assert!(read_jsonl(&path).unwrap_err().contains(":2:"));
    }
}
