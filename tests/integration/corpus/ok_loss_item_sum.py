"""Look-alike (no leak): the fixed loop of ray-project/ray#40940 / qbx2/PAAC.pytorch#1 sums
`loss.item()`, a Python float, so no graph outlives its step."""
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
loss_sum = 0.0


def handle(request):
    global loss_sum
    optimizer.zero_grad()
    loss = model(torch.randn(8, 16)).pow(2).mean()
    loss.backward()
    optimizer.step()
    loss_sum += loss.item()
