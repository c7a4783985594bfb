"""Training loop that sums the loss tensor: after backward() the graph's saved tensors are freed,
but every step's autograd nodes stay chained to `loss_sum` (host memory, no tensor bytes grow).
Reported: qbx2/PAAC.pytorch#1 ("loss_sum is added by Variable, its memory is not freed") and
ray-project/ray#40940 (`loss_sum += loss` in a fine-tuning loop; fixed with `.item()`)."""
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
loss_sum = torch.zeros(())


def handle(request):
    global loss_sum
    optimizer.zero_grad()
    loss = model(torch.randn(8, 16)).pow(2).mean()
    loss.backward()
    optimizer.step()
    loss_sum = loss_sum + loss  # LEAK
