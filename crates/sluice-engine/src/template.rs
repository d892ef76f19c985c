//! Chat templates: the GGUF's Jinja `tokenizer.chat_template`, rendered with
//! minijinja under Hugging Face semantics (`messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`).

use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

/// Used when the model file carries no template and none is configured.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const TEMPLATE_NAME: &str = "chat";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, thiserror::Error)]
#[error("chat template: {0}")]
pub struct TemplateError(String);

impl From<Error> for TemplateError {
    fn from(err: Error) -> Self {
        // The detail carries `raise_exception`'s message, which is what a
        // client needs to see ("roles must alternate", ...).
        match err.detail() {
            Some(detail) => Self(detail.to_owned()),
            None => Self(err.to_string()),
        }
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct RenderContext<'a> {
    messages: &'a [ChatMessage],
    add_generation_prompt: bool,
    bos_token: &'a str,
    eos_token: &'a str,
}

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    pub fn new(
        source: String,
        bos_token: String,
        eos_token: String,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        // Hugging Face renders with trim_blocks and lstrip_blocks on.
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source)?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
        })
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let template = self.env.get_template(TEMPLATE_NAME)?;
        let context = RenderContext {
            messages,
            add_generation_prompt,
            bos_token: &self.bos_token,
            eos_token: &self.eos_token,
        };
        Ok(template.render(minijinja::value::Serde(&context))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-Instruct's template as shipped in its GGUF: it adds a default
    /// system prompt when the conversation has none.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn message(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn default_system_prompt_is_added_when_missing() {
        let template =
            ChatTemplate::new(SMOLLM2.into(), String::new(), "<|im_end|>".into()).unwrap();
        let text = template.render(&[message("user", "Hi")], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn given_system_prompt_replaces_the_default() {
        let template = ChatTemplate::new(SMOLLM2.into(), String::new(), String::new()).unwrap();
        let text = template
            .render(
                &[message("system", "Be brief."), message("user", "Hi")],
                false,
            )
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn bos_token_and_python_string_methods_are_available() {
        let source =
            "{{ bos_token }}{% for m in messages %}{{ m['content'].strip().upper() }}{% endfor %}";
        let template = ChatTemplate::new(source.into(), "<s>".into(), String::new()).unwrap();
        assert_eq!(
            template.render(&[message("user", "  hi ")], true).unwrap(),
            "<s>HI"
        );
    }

    #[test]
    fn raise_exception_surfaces_its_message() {
        let source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}";
        let template = ChatTemplate::new(source.into(), String::new(), String::new()).unwrap();
        let err = template
            .render(&[message("assistant", "x")], true)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("Conversation must start with user"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_are_reported_at_load() {
        assert!(ChatTemplate::new("{% for %}".into(), String::new(), String::new()).is_err());
    }
}
