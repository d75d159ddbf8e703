"""ATen's GEMM (oneDNN bf16, MKL fp32) for the weight gradients g^T z, g^T a view, as the op
calls it: python aten_gemm_rate.py"""
import torch, time
torch.manual_seed(0)
for (R,G,K) in [(6400,2048,512),(6400,2048,1024),(6400,1024,256),(6400,1024,64),(2500,512,128)]:
  for dt in [torch.bfloat16, torch.float32]:
    g = torch.randn(R,G).to(dt); z = torch.randn(R,K).to(dt)
    ts=[]
    for i in range(7):
        t=time.perf_counter(); w = g.t() @ z; ts.append(time.perf_counter()-t)
    ts.sort(); t=ts[3]
    print(f"R{R} G{G} K{K} {str(dt)[6:]}: g^T z {t*1e3:.2f} ms {2*R*G*K/t/1e9:.0f} GFLOP/s")
