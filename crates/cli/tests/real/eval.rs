use transact::data::corpus::{self, Corpus};
use transact::eval::metrics::{PACK_TOKENS, run_task};
use transact::eval::perplexity::{corpus_perplexity, sequence_nll, windows};
use transact::eval::scorer::{encode, score_group, score_packed};
use transact::Silent;
use transact::eval::task::{self, Request};

use crate::common::{model, path_str, run_cli, scratch};

fn olmo(task: &str, variant: &str) -> std::path::PathBuf {
    corpus::task_dir(task, variant).expect("run scripts/fetch-assets.sh")
}

/// Reference values from an independent implementation on the same weights.
#[test]
fn piqa_first_50_matches_reference() {
    let lm = model();
    let t = task::load_task_dir(&olmo("piqa", "rc_0shot")).unwrap().limit(Some(50));
    let r = run_task(&lm.model, &lm.tokenizer, &t, 8192, PACK_TOKENS, &Silent).unwrap();
    assert_eq!((r.docs, r.split.as_str()), (50, "validation"));
    assert!((r.acc - 0.72).abs() < 1e-9, "acc {}", r.acc);
    assert!((r.acc_norm.unwrap() - 0.70).abs() < 1e-9, "acc_norm {:?}", r.acc_norm);
}

#[test]
fn arc_easy_first_40_matches_reference() {
    let lm = model();
    let t = task::load_task_dir(&olmo("arc_easy", "rc_0shot")).unwrap().limit(Some(40));
    // One doc per forward (its context in a KV cache) and packed docs decide alike.
    let r = run_task(&lm.model, &lm.tokenizer, &t, 8192, 0, &Silent).unwrap();
    assert!((r.acc - 0.50).abs() < 1e-9, "acc {}", r.acc);
    assert!((r.acc_norm.unwrap() - 0.425).abs() < 1e-9, "acc_norm {:?}", r.acc_norm);
}

/// The shared-prefix batch gives each continuation the log-likelihood of a plain full forward.
#[test]
fn shared_prefix_scoring_equals_separate_forwards() {
    let lm = model();
    let reqs = [
        ("Question: Which gas do plants absorb?\nAnswer:", " carbon dioxide"),
        ("Question: Which gas do plants absorb?\nAnswer:", " oxygen"),
        ("Question: Which gas do plants absorb?\nAnswer:", " helium"),
        // A different context (WinoGrande-style) in the same batch: no shared prefix beyond it.
        ("Sarah was a better surgeon than Maria so Maria", " always got the easier cases."),
        ("The trailing space moves ", "onto the continuation"),
    ];
    let encoded: Vec<_> = reqs
        .iter()
        .map(|(c, k)| encode(&lm.tokenizer, &Request { context: c.to_string(), continuation: k.to_string() }, 8192).unwrap())
        .collect();
    let trailing = &encoded[4];
    assert_eq!(lm.tokenizer.decode(&trailing.ids[trailing.cont_start..]).unwrap(), " onto the continuation");
    let together = score_group(&lm.model, &encoded[..3]).unwrap();
    let mixed = score_group(&lm.model, &encoded).unwrap();
    for (i, e) in encoded.iter().enumerate() {
        // Full-sequence NLL minus the context's NLL = the continuation's log-likelihood.
        let (all, _) = sequence_nll(&lm.model, &e.ids).unwrap();
        let (ctx, _) = sequence_nll(&lm.model, &e.ids[..e.cont_start]).unwrap();
        let want = ctx - all;
        assert!((mixed[i].loglik - want).abs() < 1e-3, "request {i}: {} vs {want}", mixed[i].loglik);
        if i < 3 {
            assert!((together[i].loglik - want).abs() < 1e-3, "shared prefix {i}: {} vs {want}", together[i].loglik);
        }
    }
    // " carbon dioxide" is the likelier answer.
    assert!(together[0].loglik > together[2].loglik);
    // Packed into one forward pass as three docs (the first with a shared prefix), each request
    // gets the same log-likelihood and greediness.
    let docs = [encoded[..3].to_vec(), encoded[3..4].to_vec(), encoded[4..].to_vec()];
    let packed: Vec<_> = score_packed(&lm.model, &docs).unwrap().into_iter().flatten().collect();
    for (i, (p, m)) in packed.iter().zip(&mixed).enumerate() {
        assert!((p.loglik - m.loglik).abs() < 1e-3, "packed request {i}: {} vs {}", p.loglik, m.loglik);
        assert_eq!((p.is_greedy, p.tokens), (m.is_greedy, m.tokens), "packed request {i}");
    }
}

#[test]
fn builtin_tasks_load_with_lm_eval_prompts() {
    let expect = [
        ("piqa", 1838, "validation"),
        ("winogrande", 1267, "validation (xl)"),
        ("arc_easy", 2376, "test"),
        ("arc_challenge", 1172, "test"),
        ("boolq", 3270, "validation"),
        ("openbookqa", 500, "test"),
        ("lambada", 5153, "test"),
    ];
    for (name, docs, split) in expect {
        let t = task::builtin(name).unwrap();
        assert_eq!((t.docs.len(), t.split.as_str()), (docs, split), "{name}");
    }
    let piqa = task::builtin("piqa").unwrap();
    assert!(piqa.docs[0].requests[0].context.starts_with("Question: How do I ready a guinea pig cage"));
    // 5-shot files rebuilt as 0-shot: no demonstrations left in the context.
    let arc = task::builtin("arc_easy").unwrap();
    let c = &arc.docs[0].requests[0].context;
    assert!(c.starts_with("Question: ") && c.ends_with("\nAnswer:") && c.matches("Question:").count() == 1, "{c}");
    let obqa = task::builtin("openbookqa").unwrap();
    let c = &obqa.docs[0].requests[0].context;
    assert!(!c.contains("Question:") && !c.contains("Answer:"), "{c}");
    assert!(task::builtin("mmlu").unwrap_err().to_string().contains("built-in tasks: piqa"));
}

#[test]
fn lambada_subset_scores_last_word() {
    let lm = model();
    let t = task::builtin("lambada").unwrap().limit(Some(20));
    let r = run_task(&lm.model, &lm.tokenizer, &t, 8192, PACK_TOKENS, &Silent).unwrap();
    assert!(r.acc_norm.is_none());
    let ppl = r.perplexity.unwrap();
    eprintln!("LAMBADA first 20: acc {:.3}, perplexity {ppl:.2}", r.acc);
    assert!(r.acc > 0.1 && ppl > 1.0 && ppl < 1000.0);
}

#[test]
fn perplexity_token_accounting() {
    assert_eq!(windows(10, 4), [(0, 4), (3, 7), (6, 10)]);
    assert_eq!(windows(11, 4), [(0, 4), (3, 7), (6, 10), (9, 11)]);
    assert!(windows(1, 4).is_empty());

    let lm = model();
    let text = "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks were striking thirteen.";
    let corpus = Corpus { name: "small".into(), source: "test".into(), docs: vec![text.into()] };
    let ids = lm.tokenizer.encode(text).unwrap();
    let r = corpus_perplexity(&lm.model, &lm.tokenizer, &corpus, 8, None, &Silent).unwrap();
    assert_eq!(r.tokens_total, ids.len());
    assert_eq!(r.tokens_scored, ids.len() - 1, "every token but the first, once");
    assert_eq!((r.stride, r.windows), (7, (ids.len() - 1).div_ceil(7)));
    let want: f64 = windows(ids.len(), 8).iter().map(|&(s, e)| sequence_nll(&lm.model, &ids[s..e]).unwrap().0).sum();
    assert!((r.nll - want).abs() < 1e-6);
    let first = lm.tokenizer.decode(&ids[..1]).unwrap();
    assert_eq!(r.bytes, text.len() - first.len());
    assert_eq!(r.words, text.split_whitespace().count() - 1, "the first word is one unscored token");
    assert!((r.token_perplexity - (r.nll / r.tokens_scored as f64).exp()).abs() < 1e-9);
    // A longer window sees more context: lower perplexity on the same tokens.
    let long = corpus_perplexity(&lm.model, &lm.tokenizer, &corpus, 64, None, &Silent).unwrap();
    assert_eq!(long.tokens_scored, r.tokens_scored);
    assert!(long.token_perplexity < r.token_perplexity);
}

#[test]
fn bad_task_files_name_the_line() {
    let d = scratch();
    let cases = [
        ("missing.jsonl", "{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 0}\n{\"context\": \"b\", \"gold\": 1}\n", "line 2: missing field `choices`"),
        ("gold.jsonl", "{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 2}\n", "line 1: gold 2 is out of range for 2 choices"),
        ("json.jsonl", "{\"context\": \"a\", \"choices\": [\"x\"], \"gold\": 0}\n\n{\"context\": \"a\",\n", "line 3: invalid JSON"),
        ("type.jsonl", "{\"context\": 5, \"choices\": [\"x\"], \"gold\": 0}\n", "line 1: field `context` is not a string"),
        ("empty.jsonl", "", "the file is empty"),
    ];
    for (name, text, want) in cases {
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        let e = format!("{:#}", task::load_simple_jsonl(&p).unwrap_err());
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    }
    // The CLI rejects it before loading the model, with exit code 2.
    let (code, _, err) = run_cli(&["eval", path_str(&crate::common::gguf_path()), "--task-file", path_str(&d.path().join("gold.jsonl"))]);
    assert_eq!(code, 2);
    assert!(err.contains("gold.jsonl: line 1"), "{err}");
    // Request-format folders too.
    let dir = d.path().join("task");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("requests.jsonl"), "{\"doc_id\": 0, \"idx\": 0, \"label\": 0, \"request\": {\"context\": \"a\"}}\n").unwrap();
    let e = format!("{:#}", task::load_task_dir(&dir).unwrap_err());
    assert!(e.contains("line 1: missing field `request.continuation`"), "{e}");
}

#[test]
fn simple_jsonl_task_and_deterministic_json() {
    let d = scratch();
    let f = d.path().join("capitals.jsonl");
    std::fs::write(
        &f,
        "{\"context\": \"The capital of France is\", \"choices\": [\"Paris\", \"Berlin\", \"Madrid\"], \"gold\": 0}\n\
         {\"context\": \"The capital of Germany is\", \"choices\": [\"Rome\", \"Berlin\"], \"gold\": 1}\n",
    )
    .unwrap();
    let txt = d.path().join("story.txt");
    std::fs::write(&txt, "It was a bright cold day in April, and the clocks were striking thirteen.").unwrap();
    let gguf = crate::common::gguf_path();
    let mut outs = Vec::new();
    for i in 0..2 {
        let j = d.path().join(format!("r{i}.json"));
        let (code, table, err) = run_cli(&["eval", path_str(&gguf), "--task-file", path_str(&f), "--ppl", path_str(&txt), "--seq-len", "16", "--json", path_str(&j)]);
        assert_eq!(code, 0, "{err}");
        assert!(table.contains("capitals"), "{table}");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
        assert_eq!(v["tasks"][0]["acc"], 1.0);
        // Timings aside, the report is the same.
        v["seconds_total"] = 0.into();
        v["tasks"][0]["seconds"] = 0.into();
        v["perplexity"][0]["seconds"] = 0.into();
        outs.push(v);
    }
    assert_eq!(outs[0], outs[1]);
    assert_eq!(outs[0]["model"]["sha256"].as_str().unwrap().len(), 64);
}
