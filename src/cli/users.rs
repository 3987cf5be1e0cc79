//! `tessera users RESULTS add|passwd|disable|enable|list`: the teaching viewer's accounts, in
//! the viewer database of a results folder. Passwords are read from the terminal without echo,
//! or as the first line of standard input when it is not a terminal; never from the command
//! line (it would show in the process list and the shell's history).

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use tessera::serve::accounts::{self, Db, Role};

use super::{EXIT_ALL_FAILED, EXIT_OK};

#[derive(Debug, Args)]
pub struct UsersArgs {
    /// The results folder the viewer serves (its database: RESULTS/.tessera/viewer.sqlite).
    #[arg(value_name = "RESULTS")]
    results: PathBuf,
    /// Another database file (as `tessera serve --db`).
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Instructor,
    Trainee,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Add an account (asks for its password).
    Add {
        /// Login name: 1–64 letters, digits, spaces, '.', '_' or '-'.
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Set a new password (the account's sessions end).
    Passwd { name: String },
    /// Disable an account: it cannot log in, its sessions end; its answers are kept.
    Disable { name: String },
    /// Enable a disabled account again.
    Enable { name: String },
    /// List the accounts (name, role, disabled).
    List,
}

fn password(name: &str) -> Result<String, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let a = rpassword::prompt_password(format!("Password for {name}: "))
            .map_err(|e| e.to_string())?;
        let b = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
        if a != b {
            return Err("the two passwords differ".into());
        }
        Ok(a)
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("standard input: {e}"))?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    }
}

pub fn run(a: &UsersArgs) -> u8 {
    let path =
        a.db.clone()
            .unwrap_or_else(|| accounts::db_path(&a.results));
    let create = matches!(a.action, Action::Add { .. });
    if create && a.db.is_none() && !a.results.is_dir() {
        eprintln!("error: {}: not a folder", a.results.display());
        return EXIT_ALL_FAILED;
    }
    let db = match Db::open(&path, create) {
        Ok(Some(db)) => db,
        Ok(None) => {
            eprintln!(
                "error: {}: no viewer database (no account yet)",
                path.display()
            );
            return EXIT_ALL_FAILED;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ALL_FAILED;
        }
    };
    let done = match &a.action {
        Action::Add { name, role } => {
            let role = match role {
                RoleArg::Instructor => Role::Instructor,
                RoleArg::Trainee => Role::Trainee,
            };
            password(name)
                .and_then(|p| db.add_user(name, role, &p).map_err(|e| e.to_string()))
                .map(|u| format!("added {} ({})", u.name, u.role.as_str()))
        }
        Action::Passwd { name } => password(name)
            .and_then(|p| db.set_password(name, &p).map_err(|e| e.to_string()))
            .map(|()| format!("new password for {name}; its sessions ended")),
        Action::Disable { name } => db
            .set_disabled(name, true)
            .map(|()| format!("{name} disabled; its sessions ended"))
            .map_err(|e| e.to_string()),
        Action::Enable { name } => db
            .set_disabled(name, false)
            .map(|()| format!("{name} enabled"))
            .map_err(|e| e.to_string()),
        Action::List => db
            .users()
            .map(|us| {
                us.iter()
                    .map(|u| {
                        format!(
                            "{}\t{}{}",
                            u.name,
                            u.role.as_str(),
                            if u.disabled { "\tdisabled" } else { "" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .map_err(|e| e.to_string()),
    };
    match done {
        Ok(msg) => {
            if !msg.is_empty() {
                println!("{msg}");
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ALL_FAILED
        }
    }
}
