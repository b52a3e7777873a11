//! The `k8s` commands of the embedded engine: one Nushell command per
//! [`crate::k8s::SPECS`] entry, and the parent `k8s` that prints their help.
//!
//! Each command's signature is built from its spec (positionals are strings, flags as
//! the spec says), so a wrong flag is a parse error that `check` reports with file and
//! line (test `k8s_embedded::a_wrong_flag_is_a_parse_error_with_file_and_line`). A call
//! turns its arguments into an [`Invocation`] generically (positionals by name, flags by
//! long name) and hands it to the [`Session`] of the script call it runs in, found by
//! the call id like `print` finds its output; outside a call (top level, `config`) the
//! commands fail with [`ErrorCode::OutsideCall`].
//!
//! No I/O of its own: the session does it, on the runtime it captured.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use nu_engine::command_prelude::*;
use nu_protocol::shell_error::generic::GenericError;
use serde_json::Map;

use super::convert::to_json;
use super::print::current;
use crate::k8s::{ErrorCode, FlagValue, Input, Invocation, K8sError, SPECS, Session, Spec};

static SESSIONS: LazyLock<Mutex<HashMap<Arc<str>, Arc<Session>>>> = LazyLock::new(Default::default);

fn sessions() -> std::sync::MutexGuard<'static, HashMap<Arc<str>, Arc<Session>>> {
    // One insert or remove at a time: a panic cannot leave the map inconsistent.
    SESSIONS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes `session` the one the commands of call `id` use, until the guard drops.
pub(crate) fn enter(id: Arc<str>, session: Arc<Session>) -> SessionScope {
    sessions().insert(id.clone(), session);
    SessionScope { id }
}

/// Unregisters a call's session when dropped.
pub(crate) struct SessionScope {
    id: Arc<str>,
}

impl Drop for SessionScope {
    fn drop(&mut self) {
        sessions().remove(&self.id);
    }
}

/// A `k8s` error as a Nushell error: the message is the error's text, the code
/// `nuop::k8s::<code>` (reachable as `$e.code`-style fields in `catch`).
pub fn shell_error(error: &K8sError, span: Span) -> ShellError {
    ShellError::Generic(
        GenericError::new(error.to_string(), error.reason.clone(), span)
            .with_code(error.code.as_str()),
    )
}

/// One `k8s <verb>` command.
#[derive(Clone)]
pub struct K8sCommand {
    spec: &'static Spec,
    name: String,
}

/// Every `k8s <verb>` command, one per spec.
pub fn commands() -> Vec<K8sCommand> {
    SPECS
        .iter()
        .map(|spec| K8sCommand {
            spec,
            name: spec.name(),
        })
        .collect()
}

/// The signature a spec describes.
pub fn signature(spec: &Spec) -> Signature {
    let output = match spec.output {
        crate::k8s::Output::Nothing => Type::Nothing,
        crate::k8s::Output::List => Type::List(Box::new(Type::Any)),
        _ => Type::Any,
    };
    // Any input: the first command of a closure receives the closure's input (`each
    // {|ns| k8s get ...}`), which commands that read nothing must accept and ignore.
    let mut signature = Signature::build(spec.name())
        .input_output_types(vec![(Type::Any, output)])
        .category(Category::Custom("k8s".into()));
    for p in spec.positionals {
        signature = signature.required(p.name, SyntaxShape::String, p.description);
    }
    for f in spec.flags {
        signature = match f.value {
            FlagValue::Switch => signature.switch(f.long, f.description, f.short),
            FlagValue::String => {
                signature.named(f.long, SyntaxShape::String, f.description, f.short)
            }
            FlagValue::Any => signature.named(f.long, SyntaxShape::Any, f.description, f.short),
        };
    }
    signature
}

impl Command for K8sCommand {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> Signature {
        signature(self.spec)
    }

    fn description(&self) -> &str {
        self.spec.description
    }

    fn run(
        &self,
        engine_state: &EngineState,
        stack: &mut Stack,
        call: &Call,
        input: PipelineData,
    ) -> Result<PipelineData, ShellError> {
        let head = call.head;
        let config = stack.get_config(engine_state);
        let mut args = Map::new();
        for (i, p) in self.spec.positionals.iter().enumerate() {
            let value: String = call.req(engine_state, stack, i)?;
            args.insert(p.name.into(), value.into());
        }
        for f in self.spec.flags {
            match f.value {
                FlagValue::Switch => {
                    if call.has_flag(engine_state, stack, f.long)? {
                        args.insert(f.long.into(), true.into());
                    }
                }
                FlagValue::String => {
                    if let Some(v) = call.get_flag::<String>(engine_state, stack, f.long)? {
                        args.insert(f.long.into(), v.into());
                    }
                }
                FlagValue::Any => {
                    if let Some(v) = call.get_flag::<Value>(engine_state, stack, f.long)? {
                        args.insert(f.long.into(), to_json(&v, &config));
                    }
                }
            }
        }
        let input = match self.spec.input {
            Input::Nothing => serde_json::Value::Null,
            _ => to_json(&input.into_value(head)?, &config),
        };
        let invocation = Invocation {
            verb: self.spec.verb.into(),
            args,
            input,
        };
        let session = current(engine_state, stack)
            .and_then(|call| sessions().get(&call.id).cloned())
            .ok_or_else(|| {
                shell_error(
                    &K8sError {
                        verb: self.spec.verb.into(),
                        target: "outside a call".into(),
                        reason: "k8s commands run only in reconcile/finalize".into(),
                        code: ErrorCode::OutsideCall,
                    },
                    head,
                )
            })?;
        match session.invoke_blocking(&invocation) {
            Ok(value) => Ok(PipelineData::value(value.into_value(head), None)),
            // A call stopped by its timeout or a cancel ends as interrupted (a timeout);
            // a command that ran past the deadline on its own fails like any error.
            Err(error)
                if error.code == ErrorCode::Interrupted && engine_state.signals().interrupted() =>
            {
                Err(ShellError::Interrupted { span: head })
            }
            Err(error) => Err(shell_error(&error, head)),
        }
    }
}

/// `k8s`: the commands' help.
#[derive(Clone)]
pub struct K8sHelp;

impl Command for K8sHelp {
    fn name(&self) -> &str {
        "k8s"
    }

    fn signature(&self) -> Signature {
        Signature::build("k8s")
            .input_output_types(vec![(Type::Nothing, Type::String)])
            .category(Category::Custom("k8s".into()))
    }

    fn description(&self) -> &str {
        "Read and write Kubernetes objects from reconcile/finalize (get, list, apply, patch, create, delete, own, owner-ref, children)."
    }

    fn run(
        &self,
        engine_state: &EngineState,
        stack: &mut Stack,
        call: &Call,
        _input: PipelineData,
    ) -> Result<PipelineData, ShellError> {
        let help = nu_engine::get_full_help(self, engine_state, stack, call.head);
        Ok(Value::string(help, call.head).into_pipeline_data())
    }
}
