import quantsearch as qs
import torch
import torchvision

model = torchvision.models.resnet18(num_classes=10)
model.load_state_dict(torch.load("resnet18.pt"))  # your trained weights
data = torchvision.datasets.ImageFolder("data/train", torchvision.transforms.ToTensor())
loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)
val = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder("data/val", data.transform), batch_size=256)
supernet = qs.train_supernet(model, loader, qs.SupernetSpec(epochs=2), val_batches=val)  # every bit-width at once
for config in ("W8A8", "W4A4", "W2A2"):
    subnet = supernet.subnet(config, bn_batches=loader)  # a quantized copy, BN recalibrated for it
    print(config, "top-1", qs.evaluate(subnet, val).top1)
mixed = supernet.subnet(qs.QuantTarget(config="W3A3", weight_granularity="per_tensor"), bn_batches=loader)
