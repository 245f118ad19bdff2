//! The injector: the mutating admission webhook and the offline `keyward inject`.

pub mod cli {
    //! `keyward injector` and `keyward inject`.
    use std::process::ExitCode;

    /// Arguments of `keyward injector`.
    #[derive(Debug, clap::Args)]
    pub struct InjectorArgs {}

    /// Arguments of `keyward inject`.
    #[derive(Debug, clap::Args)]
    pub struct InjectArgs {}

    /// Runs `keyward injector`.
    pub fn run_injector(_args: InjectorArgs) -> ExitCode {
        eprintln!("keyward injector: not built yet");
        ExitCode::FAILURE
    }

    /// Runs `keyward inject`.
    pub fn run_inject(_args: InjectArgs) -> ExitCode {
        eprintln!("keyward inject: not built yet");
        ExitCode::FAILURE
    }
}
