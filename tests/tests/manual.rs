//! The manual pages and the bash completion, as people meet them: each page
//! rendered by man(1) with its warnings on, and the completion script loaded
//! into bash and asked what it completes. The package ships exactly these
//! (`cargo xtask dist` writes them with the same commands).

use std::path::{Path, PathBuf};
use std::process::Command;

use hcp_tests::{hcp, hcp_bin, temp_dir};

/// The commands `hcp --help` lists (hidden ones are not listed).
fn commands() -> Vec<String> {
    let help = hcp(&["--help"]);
    assert_eq!(help.code, 0, "{}", help.stderr);
    let listing = help.stdout.split("Commands:\n").nth(1).expect("a Commands: section");
    listing
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

fn pages() -> (PathBuf, Vec<PathBuf>) {
    let dir = temp_dir("manual");
    let out = hcp(&["__manual", dir.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let pages: Vec<PathBuf> = out.stdout.lines().map(PathBuf::from).collect();
    (dir, pages)
}

/// `man -l PAGE` at 80 columns: the text, and what man and groff warned.
fn render(page: &Path) -> (String, String) {
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANWIDTH", "80")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("run man (apt-get install man-db)");
    assert!(out.status.success(), "man -l {}: {}", page.display(), String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn every_page_renders_without_warnings_and_says_what_people_look_up() {
    let (dir, pages) = pages();
    let mut names: Vec<String> = pages.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    names.sort();
    let mut wanted: Vec<String> = commands().iter().map(|c| format!("hcp-{c}.8")).collect();
    wanted.extend(["hcp.8", "hcp-trace-attach.8", "hcp-trace-unload.8"].map(String::from));
    wanted.sort();
    assert_eq!(names, wanted, "one page for hcp and for each command, none for hidden ones");

    for page in &pages {
        let (text, warnings) = render(page);
        assert_eq!(warnings, "", "{} warns", page.display());
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS"] {
            assert!(text.lines().any(|l| l == section), "{} has no {section}:\n{text}", page.display());
        }
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{} overflows 80 columns:\n{text}", page.display());
    }

    let (top, _) = render(&dir.join("hcp.8"));
    for section in ["OPTIONS", "EXAMPLES", "FILES", "ENVIRONMENT", "SEE ALSO"] {
        assert!(top.lines().any(|l| l == section), "hcp(8) has no {section}:\n{top}");
    }
    // Every status a script may meet, and the paths and variables hcp uses.
    for code in 0..=7 {
        assert!(top.contains(&format!("\n       {code}      ")), "exit status {code} missing from hcp(8):\n{top}");
    }
    for needle in ["/run/hcp/", "/var/lib/hcp/", "/etc/hcp/enrolled/", "HCP_LOCK_TIMEOUT", "HCP_SWITCH_TIMEOUT"] {
        assert!(top.contains(needle), "hcp(8) does not mention {needle}");
    }
    // A command's page lists its options.
    let (start, _) = render(&dir.join("hcp-start.8"));
    for option in ["--mount-point", "--read-only", "--changed-blocks", "--quota", "--trace", "--autoextend"] {
        assert!(start.contains(option), "hcp-start(8) lacks {option}:\n{start}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// What bash's completion of `words` (the last one being completed) offers,
/// with the script `hcp completions bash` prints loaded as bash-completion
/// would load it.
fn complete(script: &Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let program = r#"
        source "$1"; shift
        spec=$(complete -p hcp) || exit 90
        func=$(printf '%s\n' "$spec" | sed -n 's/.*-F \([^ ]*\).*/\1/p')
        [ -n "$func" ] || exit 91
        COMP_WORDS=("$@")
        COMP_CWORD=$(( $# - 1 ))
        COMP_LINE="$*"
        COMP_POINT=${#COMP_LINE}
        cur=${COMP_WORDS[COMP_CWORD]}
        prev=${COMP_WORDS[COMP_CWORD-1]}
        "$func" hcp "$cur" "$prev"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", program, "complete"])
        .arg(script)
        .args(words)
        .output()
        .expect("run bash");
    assert!(out.status.success(), "completing {line:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
}

#[test]
fn bash_completes_commands_options_and_values() {
    let dir = temp_dir("completion");
    let script = dir.join("hcp");
    let out = Command::new(hcp_bin()).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    std::fs::write(&script, &out.stdout).unwrap();

    let all = complete(&script, &["hcp", ""]);
    for command in commands() {
        assert!(all.contains(&command), "`hcp <TAB>` lacks {command}: {all:?}");
    }
    assert!(!all.iter().any(|c| c.starts_with("__")), "hidden commands offered: {all:?}");
    assert_eq!(complete(&script, &["hcp", "rol"]), ["rollback"]);
    assert_eq!(complete(&script, &["hcp", "start", "--tr"]), ["--trace"]);
    let stats = complete(&script, &["hcp", "stats", "--"]);
    for option in ["--prometheus", "--output", "--json", "--history", "--follow"] {
        assert!(stats.contains(&option.to_string()), "`hcp stats --<TAB>` lacks {option}: {stats:?}");
    }
    // (Options are offered beside the values, as clap's scripts do.)
    let mut shells: Vec<String> =
        complete(&script, &["hcp", "completions", ""]).into_iter().filter(|w| !w.starts_with('-')).collect();
    shells.sort();
    assert_eq!(shells, ["bash", "elvish", "fish", "powershell", "zsh"]);
    // The original's flag form too.
    assert!(complete(&script, &["hcp", "-"]).contains(&"-l".to_string()));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn zsh_and_fish_scripts_cover_every_command() {
    for shell in ["zsh", "fish"] {
        let out = Command::new(hcp_bin()).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for command in commands() {
            assert!(script.contains(&command), "the {shell} script lacks {command}");
        }
    }
    let bad = hcp(&["completions", "tcsh"]);
    assert_eq!(bad.code, 2, "an unknown shell is bad input: {}", bad.stderr);
}
