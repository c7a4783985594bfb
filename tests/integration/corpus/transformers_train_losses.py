"""Fine-tuning a (tiny) BERT classifier and keeping each step's loss tensor for logging: the list
keeps every step's graph nodes. Reported: horovod/horovod#641 (the reduced loss carries the
graph; fixed by detaching) and TRI-ML/packnet-sfm#51 ("detach loss before appending it to the
training output list")."""
import torch
from transformers import BertConfig, BertForSequenceClassification

torch.manual_seed(0)
model = BertForSequenceClassification(BertConfig(
    vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=48, max_position_embeddings=32, num_labels=2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
step_losses = []


def handle(request):
    optimizer.zero_grad()
    ids = torch.randint(0, 64, (2, 8))
    out = model(input_ids=ids, labels=torch.tensor([0, 1]))  # LEAK
    out.loss.backward()
    optimizer.step()
    step_losses.append(out.loss)
