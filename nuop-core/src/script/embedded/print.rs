//! The `print` command of the embedded engine, writing into the current call's capture.
//!
//! Nushell's own `print` lives in nu-cli and writes to the process's stdout, which in an
//! operator would mix every call's output into one stream. This one looks up the call's
//! sinks by the `NUOP_CALL_ID` the executor puts on each call's stack.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, LazyLock, Mutex};

use nu_engine::command_prelude::*;

/// Environment variable carrying the id of the call a stack belongs to.
pub const CALL_ID_ENV: &str = "NUOP_CALL_ID";

/// Where one call's output goes.
#[derive(Clone)]
pub(crate) struct Sinks {
    pub(crate) stdout: Arc<File>,
    pub(crate) stderr: Arc<File>,
}

static SINKS: LazyLock<Mutex<HashMap<String, Sinks>>> = LazyLock::new(Default::default);

/// Registers a call's sinks until the returned guard drops.
pub(crate) fn register(call_id: &str, sinks: Sinks) -> SinkRegistration {
    lock().insert(call_id.to_string(), sinks);
    SinkRegistration(call_id.to_string())
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<String, Sinks>> {
    // A panic while holding this lock cannot leave the map inconsistent.
    SINKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes a call's sinks when dropped.
pub(crate) struct SinkRegistration(String);

impl Drop for SinkRegistration {
    fn drop(&mut self) {
        lock().remove(&self.0);
    }
}

/// `print`: writes its arguments (or its input) to the call's stdout, or stderr with `-e`.
#[derive(Clone)]
pub struct Print;

impl Command for Print {
    fn name(&self) -> &str {
        "print"
    }

    fn signature(&self) -> Signature {
        Signature::build("print")
            .input_output_types(vec![(Type::Any, Type::Nothing)])
            .allow_variants_without_examples(true)
            .rest("rest", SyntaxShape::Any, "The values to print.")
            .switch(
                "no-newline",
                "Print without inserting a newline.",
                Some('n'),
            )
            .switch("stderr", "Print to stderr instead of stdout.", Some('e'))
            .switch("raw", "Print without formatting.", Some('r'))
            .category(Category::Strings)
    }

    fn description(&self) -> &str {
        "Print the given values to the script's stdout (or stderr with -e)."
    }

    fn run(
        &self,
        engine_state: &EngineState,
        stack: &mut Stack,
        call: &Call,
        input: PipelineData,
    ) -> Result<PipelineData, ShellError> {
        let args: Vec<Value> = call.rest(engine_state, stack, 0)?;
        let no_newline = call.has_flag(engine_state, stack, "no-newline")?;
        let to_stderr = call.has_flag(engine_state, stack, "stderr")?;
        let config = stack.get_config(engine_state);

        let values = if args.is_empty() {
            vec![input.into_value(call.head)?]
        } else {
            args
        };
        let mut text = String::new();
        for value in values {
            match value {
                Value::String { val, .. } => text.push_str(&val),
                Value::Nothing { .. } => {}
                Value::Error { error, .. } => return Err(*error),
                other => text.push_str(&other.to_expanded_string("\n", &config)),
            }
            if !no_newline {
                text.push('\n');
            }
        }

        let call_id = stack
            .get_env_var(engine_state, CALL_ID_ENV)
            .and_then(|v| v.as_str().ok())
            .map(str::to_string);
        let sinks = call_id.and_then(|id| lock().get(&id).cloned());
        match sinks {
            Some(sinks) => {
                let file = if to_stderr {
                    &sinks.stderr
                } else {
                    &sinks.stdout
                };
                (&**file).write_all(text.as_bytes()).map_err(|e| {
                    ShellError::Generic(nu_protocol::shell_error::generic::GenericError::new(
                        "print failed",
                        e.to_string(),
                        call.head,
                    ))
                })?;
            }
            // Outside a call (a script's top level at load time) there is no capture.
            None => tracing::info!(target: "nuop::script", "{}", text.trim_end()),
        }
        Ok(PipelineData::empty())
    }
}
