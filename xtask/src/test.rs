use clap::Args;
#[derive(Args)]
pub struct TestArgs {}
pub fn run(_a: &TestArgs) -> anyhow::Result<()> { todo!() }
