//! The `print` command of the embedded engine, writing into the current call's output,
//! and the lookup of "the current call" that `print` and `run-external` share.
//!
//! Nushell's own `print` lives in nu-cli and writes to the process's stdout, which in an
//! operator would mix every call's output into one stream. This one finds the call it
//! belongs to first by the evaluation thread (a thread-local the script cannot touch),
//! and only on another thread (`par-each` workers) by the `NUOP_CALL_ID` on the stack:
//! call ids carry 64 random bits, so a script that rewrites the variable cannot name
//! another call (test `conformance::a_rewritten_call_id_reaches_no_other_call`).
//!
//! No I/O of its own: writes go to [`super::output::CallOutput`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use nu_engine::command_prelude::*;

use super::output::{CallOutput, Stream};

/// Environment variable carrying the id of the call a stack belongs to.
pub const CALL_ID_ENV: &str = "NUOP_CALL_ID";

/// The call an evaluation belongs to.
#[derive(Clone)]
pub(crate) struct CurrentCall {
    pub(crate) id: Arc<str>,
    pub(crate) output: Arc<CallOutput>,
}

static CALLS: LazyLock<Mutex<HashMap<Arc<str>, Arc<CallOutput>>>> = LazyLock::new(Default::default);

thread_local! {
    static CURRENT: RefCell<Option<CurrentCall>> = const { RefCell::new(None) };
}

fn calls() -> std::sync::MutexGuard<'static, HashMap<Arc<str>, Arc<CallOutput>>> {
    // Inserting and removing entries cannot leave the map inconsistent.
    CALLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes `call` the current call of this thread (and findable by id from others) until
/// the returned guard drops.
pub(crate) fn enter(call: CurrentCall) -> CallScope {
    calls().insert(call.id.clone(), call.output.clone());
    let id = call.id.clone();
    let previous = CURRENT.with(|c| c.replace(Some(call)));
    CallScope { id, previous }
}

/// Ends a call's scope on this thread when dropped.
pub(crate) struct CallScope {
    id: Arc<str>,
    previous: Option<CurrentCall>,
}

impl Drop for CallScope {
    fn drop(&mut self) {
        calls().remove(&self.id);
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// The call a command runs in: this thread's, else the one the stack names.
pub(crate) fn current(engine_state: &EngineState, stack: &Stack) -> Option<CurrentCall> {
    if let Some(call) = CURRENT.with(|c| c.borrow().clone()) {
        return Some(call);
    }
    let id = stack
        .get_env_var(engine_state, CALL_ID_ENV)
        .and_then(|v| v.as_str().ok())?
        .to_string();
    let output = calls().get(id.as_str()).cloned()?;
    Some(CurrentCall {
        id: id.into(),
        output,
    })
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

        match current(engine_state, stack) {
            Some(current) => {
                let stream = if to_stderr {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                };
                current.output.write(stream, text.as_bytes());
            }
            // Outside a call (nothing registered) there is no capture.
            None => tracing::info!(target: "nuop::script", "{}", text.trim_end()),
        }
        Ok(PipelineData::empty())
    }
}
