//! The general-English training corpora load from the fetched packages, and the 13-gram check
//! finds evaluation text in them (and only there).

use std::sync::OnceLock;

use transact::data::corpus;
use transact::data::overlap::{self, EvalIndex};

fn index() -> &'static EvalIndex {
    static I: OnceLock<EvalIndex> = OnceLock::new();
    I.get_or_init(|| EvalIndex::evaluation_sets().expect("evaluation sets (run scripts/fetch-assets.sh)"))
}

#[test]
fn general_corpora_load_as_documents() {
    // Document counts of the pinned package versions (scripts/fetch-assets.sh).
    for (name, docs) in [("wikipedia", 10_033), ("kjv", 1189), ("wordnet", 4507), ("brown", 500), ("gcide", 8373)] {
        let c = corpus::load(name).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(c.docs.len(), docs, "{name}: documents");
        assert!(c.docs.iter().all(|d| !d.trim().is_empty()), "{name}: an empty document");
        assert!(corpus::BUILTIN.iter().any(|(n, _)| *n == name), "{name} is not listed in BUILTIN");
    }
    let kjv = corpus::load("kjv").unwrap();
    assert!(kjv.docs[0].starts_with("In the beginning God created the heaven and the earth. And the earth"));
}

#[test]
fn evaluation_text_is_flagged_and_calibration_text_is_not() {
    let idx = index();
    let names: Vec<&str> = idx.sets().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), 2 + transact::eval::task::builtin_names().len());
    assert!(names.contains(&"wiki") && names.contains(&"hellaswag"), "{names:?}");

    // A BoolQ passage, verbatim and re-cased inside other text.
    let wiki = corpus::load("wiki").unwrap();
    assert!(idx.overlaps(&wiki.docs[0]) > 0);
    let hidden = format!("Some preface. {} And more.", wiki.docs[1].to_uppercase());
    assert!(idx.overlaps(&hidden) > 0);

    // CoQA stories are calibration text: one of 499 shares a 13-gram with BoolQ (see
    // examples/overlap_report.rs), the first does not.
    let coqa = corpus::load("coqa").unwrap();
    assert_eq!(idx.overlaps(&coqa.docs[0]), 0);
    let (kept, report) = overlap::filter(idx, "coqa", coqa.docs);
    assert_eq!((report.documents, report.overlapping, kept.len()), (499, 1, 498));

    // The Wikipedia training corpus overlaps the `wiki` evaluation set, and filtering removes it.
    let (kept, report) = overlap::filter(idx, "wikipedia", corpus::load("wikipedia").unwrap().docs);
    let wiki_set = report.per_eval_set.iter().find(|s| s.name == "wiki").unwrap();
    assert!(wiki_set.documents > 0 && report.overlapping < report.documents / 50, "{report:?}");
    assert!(kept.iter().all(|d| idx.overlaps(d) == 0));
}
