"""Tensors displayed in IPython cells stay in the output cache (Out, _N). Reported:
ipython/ipython#12879 ("the array made in that cell is stored inside the Out dict") and
jupyter/notebook#2201 (`%reset` / `%xdel` to drop IPython's references)."""
import torch
from IPython.core.interactiveshell import InteractiveShell

torch.manual_seed(0)
shell = InteractiveShell.instance()
shell.user_ns["predict"] = lambda: torch.randn(16, 16)  # LEAK


def handle(request):
    shell.run_cell("predict()", store_history=True)
