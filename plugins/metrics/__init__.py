"""Image quality metrics (PSNR, SSIM, LPIPS, identity) for benchmarks and reports."""
