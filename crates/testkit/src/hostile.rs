//! Hostile input for property tests (proptest strategies): text shaped like a valid file with
//! parts overwritten, cut or repeated — the way a hand edit, a bad template or a truncated write
//! breaks one — and text of no shape at all. Parsers fed these must answer with an error, never a
//! panic. Case budgets: `PROPTEST_CASES` overrides the suite's.

use proptest::prelude::*;

/// Characters that matter to YAML and JSON, and a few that do not.
const SYNTAX: &[char] = &[
    ':', '-', ' ', '\n', '\t', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '\'', '"', '%',
    '@', '`', ',', '?', '.', '/', '\\', '0', '1', '9', 'a', 'x', 'e', 'é', '\u{0}', '\u{feff}',
];

fn syntax_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(SYNTAX), 0..max)
        .prop_map(|chars| chars.into_iter().collect())
}

/// One edit of a text: replace `len` characters at `at` (both taken modulo the text) with `insert`.
#[derive(Debug, Clone)]
struct Edit {
    at: usize,
    len: usize,
    insert: String,
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let at = e.at % (chars.len() + 1);
        let end = (at + e.len % 24).min(chars.len());
        chars.splice(at..end, e.insert.chars());
    }
    chars.into_iter().collect()
}

/// `seed` with a few edits: characters replaced, deleted or inserted, and perhaps cut short.
pub fn mutated(seed: &'static str) -> impl Strategy<Value = String> {
    let edit = (any::<usize>(), any::<usize>(), syntax_text(12))
        .prop_map(|(at, len, insert)| Edit { at, len, insert });
    (
        prop::collection::vec(edit, 1..5),
        prop::option::of(any::<usize>()),
    )
        .prop_map(move |(edits, cut)| {
            let mut text = apply(seed, &edits);
            if let Some(cut) = cut {
                let keep = cut % (text.chars().count() + 1);
                text = text.chars().take(keep).collect();
            }
            text
        })
}

/// Text of no particular shape: syntax characters, or any Unicode at all.
pub fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![syntax_text(200), any::<String>()]
}

/// The suite's budget of cases, unless `PROPTEST_CASES` asks for a longer run.
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(cases),
        // A failure prints its shrunk input; nothing is written beside the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_stay_in_bounds_and_change_the_text() {
        let edits = [Edit {
            at: 5,
            len: 0,
            insert: "x".into(),
        }];
        assert_eq!(
            apply("ab", &edits),
            "abx",
            "at 5 of 2 characters is 5 mod 3 = 2: the end"
        );
        let edits = [Edit {
            at: 0,
            len: 100,
            insert: "y".into(),
        }];
        assert_eq!(apply("abc", &edits), "y", "a deletion stops at the end");
        let edits = [Edit {
            at: 1,
            len: 1,
            insert: String::new(),
        }];
        assert_eq!(apply("abc", &edits), "ac");
    }
}
