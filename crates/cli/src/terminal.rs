//! Who is watching: bars and questions only for a person at a terminal.

use std::io::IsTerminal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminal {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl Terminal {
    pub fn detect() -> Self {
        Self {
            stdin: std::io::stdin().is_terminal(),
            stdout: std::io::stdout().is_terminal(),
            stderr: std::io::stderr().is_terminal(),
        }
    }

    /// Progress bars, drawn on stderr: only while stdout is a terminal too, so a redirected or
    /// piped run stays quiet.
    pub fn bars(self) -> bool {
        self.stdout && self.stderr
    }

    /// Questions need someone to read them and to answer.
    pub fn can_ask(self) -> bool {
        self.stdin && self.stderr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_bar_when_stdout_is_redirected_and_no_question_without_input() {
        let all = Terminal { stdin: true, stdout: true, stderr: true };
        assert!(all.bars() && all.can_ask());
        assert!(!Terminal { stdout: false, ..all }.bars());
        assert!(!Terminal { stderr: false, ..all }.bars());
        assert!(!Terminal { stdin: false, ..all }.can_ask());
        assert!(Terminal { stdout: false, ..all }.can_ask(), "`uex export wait ID > out.json` may still ask");
    }
}
