//! Commands the embedded engine replaces: those that would act on the operator process
//! instead of the script's call, and `run-external`, wrapped so every external command
//! is tied to its call.
//!
//! - `exec` would replace the operator with the command (execve); `ulimit` and `umask`
//!   change limits and the file mode mask of the whole process; `job spawn` starts work
//!   that outlives its call and that another call's `exit` kills (all engine clones
//!   share one job table). Each fails with a message naming the command and what to do
//!   instead (test `conformance::commands_that_would_act_on_the_operator_are_refused`).
//! - `run-external` (what `^cmd` and bare external names call) first puts the call's
//!   id back into the environment the child gets, whatever the script did to
//!   `$env.NUOP_CALL_ID`, so a timeout or cancellation finds and kills it; then, when
//!   the script did not redirect the stream, points the child's stdout and stderr at
//!   the call's capped pipes ([`super::output`]).
//!
//! No I/O of its own beyond what `run-external` does.

use nu_engine::command_prelude::*;
use nu_protocol::engine::Redirection;
use nu_protocol::shell_error::generic::GenericError;
use nu_protocol::{OutDest, Span};

use super::output::{Stream, is_placeholder};
use super::print::{CALL_ID_ENV, current};

/// A command the embedded engine refuses, with the advice its error gives.
#[derive(Clone)]
pub struct Refused {
    name: &'static str,
    why: &'static str,
    instead: &'static str,
}

/// The commands [`Refused`] replaces.
pub fn refused() -> Vec<Refused> {
    vec![
        Refused {
            name: "exec",
            why: "it would replace the operator process with the command",
            instead: "run the command with `^cmd ...` and then `exit` with its exit code",
        },
        Refused {
            name: "ulimit",
            why: "it would change the resource limits of the whole operator process",
            instead: "set limits on the container, or run the command as `^sh -c 'ulimit ...; cmd'`",
        },
        Refused {
            name: "umask",
            why: "it would change the file mode mask of the whole operator process",
            instead: "set the mode explicitly (`^chmod`), or run `^sh -c 'umask ...; cmd'`",
        },
        Refused {
            name: "job spawn",
            why: "background jobs would outlive their call and its timeout",
            instead: "run the work in the call itself, or with the process executor",
        },
    ]
}

impl Command for Refused {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> Signature {
        // Any arguments parse, so the refusal (not a parse error) is what the author sees.
        Signature::build(self.name)
            .input_output_types(vec![(Type::Any, Type::Any)])
            .allows_unknown_args()
            .rest("args", SyntaxShape::Any, "Ignored: the command is refused.")
            .category(Category::System)
    }

    fn description(&self) -> &str {
        "Not available in nuop's embedded executor."
    }

    fn run(
        &self,
        _engine_state: &EngineState,
        _stack: &mut Stack,
        call: &Call,
        _input: PipelineData,
    ) -> Result<PipelineData, ShellError> {
        Err(refusal(self.name, self.why, self.instead, call.head))
    }
}

fn refusal(name: &str, why: &str, instead: &str, span: Span) -> ShellError {
    ShellError::Generic(GenericError::new(
        format!("`{name}` is not available in nuop's embedded executor"),
        format!("{why}; {instead}"),
        span,
    ))
}

/// `run-external`, tied to the call it runs in (see the module doc).
#[derive(Clone)]
pub struct TiedExternal;

impl Command for TiedExternal {
    fn name(&self) -> &str {
        nu_command::External.name()
    }

    fn signature(&self) -> Signature {
        nu_command::External.signature()
    }

    fn description(&self) -> &str {
        "Runs an external command as part of the current nuop call."
    }

    fn run(
        &self,
        engine_state: &EngineState,
        stack: &mut Stack,
        call: &Call,
        input: PipelineData,
    ) -> Result<PipelineData, ShellError> {
        let Some(current) = current(engine_state, stack) else {
            return nu_command::External.run(engine_state, stack, call, input);
        };
        stack.add_env_var(
            CALL_ID_ENV.into(),
            Value::string(current.id.as_ref(), call.head),
        );
        let unredirected = |dest: &OutDest| matches!(dest, OutDest::File(f) if is_placeholder(f));
        if !unredirected(stack.stdout()) && !unredirected(stack.stderr()) {
            return nu_command::External.run(engine_state, stack, call, input);
        }
        // A stream the script redirected keeps its destination: passed back as a pipe
        // redirection to itself (no redirection at all would drop a `|` after it).
        let redirection = |stream: Stream, dest: &OutDest| -> std::io::Result<Redirection> {
            if !unredirected(dest) {
                return Ok(Redirection::Pipe(dest.clone()));
            }
            Ok(Redirection::File(current.output.pipe_for(stream)?))
        };
        let capture_error = |e: std::io::Error| {
            ShellError::Generic(GenericError::new(
                "cannot capture the external command's output",
                e.to_string(),
                call.head,
            ))
        };
        let stdout = redirection(Stream::Stdout, stack.stdout()).map_err(capture_error)?;
        let stderr = redirection(Stream::Stderr, stack.stderr()).map_err(capture_error)?;
        let mut redirected = stack.push_redirection(Some(stdout), Some(stderr));
        nu_command::External.run(engine_state, &mut redirected, call, input)
    }
}
