//! Chat messages to prompt text through the model's chat template (`tokenizer_config.json`'s
//! `chat_template`, or GGUF's `tokenizer.chat_template`), as `transformers`'
//! `apply_chat_template(..., add_generation_prompt=True)` renders it.

use anyhow::{Result, anyhow, bail};
use minijinja::{Environment, ErrorKind, Value, context};
use serde::Serialize;

/// One message as the template sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos` and `eos` are the texts of the tokenizer's special tokens, which
    /// templates may use as `bos_token` and `eos_token`.
    pub fn new(source: &str, bos: String, eos: String) -> Result<Self> {
        let mut env = Environment::new();
        // Templates written for transformers call `raise_exception` to refuse a conversation.
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        // Python's string methods (`.strip()`, `.startswith()`) as templates use them.
        env.set_unknown_method_callback(minijinja_contrib_methods);
        env.add_template_owned("chat", source.to_string()).map_err(|e| anyhow!("the model's chat template does not compile: {e}"))?;
        Ok(Self { env, bos, eos })
    }

    /// The prompt text for `messages`, ending where the assistant's reply begins.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        let t = self.env.get_template("chat").map_err(|e| anyhow!("{e}"))?;
        t.render(context! { messages => messages, add_generation_prompt => true, bos_token => &self.bos, eos_token => &self.eos })
            .map_err(|e| anyhow!("the chat template refused these messages: {e}"))
    }
}

/// The few Python `str` methods chat templates call.
fn minijinja_contrib_methods(_state: &minijinja::State, value: &Value, method: &str, args: &[Value]) -> std::result::Result<Value, minijinja::Error> {
    let Some(s) = value.as_str() else {
        return Err(minijinja::Error::from(ErrorKind::UnknownMethod));
    };
    let arg = |i: usize| args.get(i).and_then(|a| a.as_str()).map(str::to_string);
    Ok(match (method, arg(0)) {
        ("strip", None) => Value::from(s.trim()),
        ("lstrip", None) => Value::from(s.trim_start()),
        ("rstrip", None) => Value::from(s.trim_end()),
        ("strip", Some(c)) => Value::from(s.trim_matches(|ch| c.contains(ch))),
        ("startswith", Some(p)) => Value::from(s.starts_with(&p)),
        ("endswith", Some(p)) => Value::from(s.ends_with(&p)),
        ("lower", None) => Value::from(s.to_lowercase()),
        ("upper", None) => Value::from(s.to_uppercase()),
        _ => return Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
    })
}

/// A template for a model that ships none: ChatML, what SmolLM2 and many small models use.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Checks a role name against those chat templates know.
pub fn check_role(role: &str) -> Result<()> {
    if !matches!(role, "system" | "user" | "assistant" | "developer" | "tool") {
        bail!("unknown role {role:?}: expected system, user, assistant, developer or tool");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_smollm2s_template_with_a_default_system_message() {
        let src = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let t = ChatTemplate::new(src, String::new(), "<|im_end|>".into()).unwrap();
        let got = t.render(&[Message { role: "user".into(), content: "Hi".into() }]).unwrap();
        assert_eq!(got, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
        let t = ChatTemplate::new("{{ raise_exception('no') }}", String::new(), String::new()).unwrap();
        assert!(t.render(&[]).unwrap_err().to_string().contains("no"));
        let t = ChatTemplate::new("{{ messages[0]['content'].strip() }}|{{ bos_token }}", "<s>".into(), String::new()).unwrap();
        assert_eq!(t.render(&[Message { role: "user".into(), content: "  x ".into() }]).unwrap(), "x|<s>");
    }
}
