//! demo
pub async fn run(_a: u32, _k: bool, _s: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    Ok(())
}
