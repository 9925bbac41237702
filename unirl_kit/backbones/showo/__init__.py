"""Show-o backbone: the MAGVIT-v2 image tokenizer plus the Show-o transformer, prompting and MaskGIT sampling."""
