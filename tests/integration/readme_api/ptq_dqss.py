import quantsearch as qs
import torch
import torchvision

model = torchvision.models.resnet18(num_classes=10)
model.load_state_dict(torch.load("resnet18.pt"))  # your trained weights
data = torchvision.datasets.ImageFolder("data/train", torchvision.transforms.ToTensor())
loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)  # any iterable of (x, y) or x
val = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder("data/val", data.transform), batch_size=256)
qmodel = qs.quantize(model, "W4A4", example=next(iter(loader)))  # a copy; first and last layer stay 8-bit
qs.calibrate(qmodel, loader, method="kl", calib_images=512)  # PTQ: one calibrator on every layer
print("PTQ top-1", qs.evaluate(qmodel, val).top1)
strategy = qs.dqss_search(qmodel, loader, qs.DQSSSpec(iters=100))  # DQSS: a calibrator per layer, by gradient
print("DQSS top-1", qs.evaluate(qmodel, val).top1)
strategy.save("strategy.json")  # qs.Strategy.load("strategy.json").build(model) rebuilds qmodel
