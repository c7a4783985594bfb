"""A global module forward hook (torch.nn.modules.module.register_module_forward_hook) that
records outputs of every module for debugging and is never removed. Reported alongside
pytorch/pytorch#82528 / #71068 (hooks that keep what they see alive); the global registry is the
`_global_forward_hooks` consulted in Module.__call__ (mittagessen/kraken#399 traceback)."""
import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

seen_outputs = []
hook_handle = register_module_forward_hook(lambda module, args, output: seen_outputs.append(output))
torch.manual_seed(0)
model = nn.Linear(16, 8)


def handle(request):
    with torch.no_grad():
        return model(torch.randn(4, 16)).sum().item()  # LEAK
