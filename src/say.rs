//! Command output on stdout (check, explain, report, demo), the only output that goes there.

use std::io::{ErrorKind, Write};

/// Writes `text` to stdout and flushes it. A reader that went away (`restatus demo | head -1`)
/// ends the process quietly with status 0, as a Unix tool ends on SIGPIPE; any other failure
/// to write ends it with an error and status 1.
pub fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(err) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        quit_on(&err);
    }
}

/// Ends the process after a failed write to stdout (see [`say`]).
pub fn quit_on(err: &std::io::Error) -> ! {
    if err.kind() == ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to stdout: {err}");
    std::process::exit(1);
}
