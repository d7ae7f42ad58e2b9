use crate::common::model;

#[test]
fn golden_token_ids() {
    let tok = &model().tokenizer;
    assert_eq!(
        tok.encode("Hello world! 12345 it's").unwrap(),
        [19556, 905, 17, 216, 33, 34, 35, 36, 37, 357, 506]
    );
    assert_eq!(tok.encode("The capital of France is").unwrap(), [504, 3575, 282, 4649, 314]);
    assert_eq!(tok.decode(&[504, 3575, 282, 4649, 314]).unwrap(), "The capital of France is");
}

#[test]
fn special_tokens_and_bos_policy() {
    let tok = &model().tokenizer;
    assert_eq!(tok.meta.bos, Some(1));
    assert_eq!(tok.meta.eos, Some(2));
    assert!(!tok.meta.add_bos, "SmolLM2 is scored without BOS");
    // Control tokens match whole, never split into pieces.
    assert_eq!(tok.encode("<|im_start|>user").unwrap()[0], 1);
}
