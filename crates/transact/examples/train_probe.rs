use std::time::Instant;
use candle_core::{Device, Tensor, Var, D};
use transact::model::io::load::load_model;
use transact::model::reference;
use transact::model::weights::{Weights, TensorRole};

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let lm = load_model(std::path::Path::new("/work/baseline/half32/model.gguf"), &dev)?;
    let cfg = lm.model.config.clone();
    let vars: Vec<Var> = TensorRole::all(&cfg).iter().map(|r| Var::from_tensor(lm.model.weights.get(*r).unwrap()).unwrap()).collect();
    let mut it = vars.iter();
    let w = Weights::from_roles(&cfg, |_| Ok::<_, anyhow::Error>(it.next().unwrap().as_tensor().clone()))?;
    let b: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1);
    let t = 256;
    let toks: Vec<u32> = (0..b * t).map(|i| (i * 7919 % 40000) as u32).collect();
    let toks = Tensor::from_vec(toks, (b, t), &dev)?;
    for _ in 0..3 {
        let t0 = Instant::now();
        let logits = reference::forward(&cfg, &w, &toks)?;
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let loss = lp.mean_all()?.neg()?;
        let t1 = Instant::now();
        let g = loss.backward()?;
        let t2 = Instant::now();
        println!("loss {} fwd {:?} bwd {:?} tok/s {:.1} grads {}", loss.to_scalar::<f32>()?, t1 - t0, t2 - t1, (b * t) as f64 / (t2 - t0).as_secs_f64(), vars.iter().filter(|v| g.get(v.as_tensor()).is_some()).count());
    }
    Ok(())
}
