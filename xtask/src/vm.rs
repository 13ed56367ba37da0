// placeholder: being written
use clap::Args;
#[derive(Args)]
pub struct VmArgs {}
pub fn run(_a: &VmArgs) -> anyhow::Result<i32> { todo!() }
