import quantsearch as qs
import torch
import torchvision

model = torchvision.models.resnet18(num_classes=10)
model.load_state_dict(torch.load("resnet18.pt"))  # your trained weights
data = torchvision.datasets.ImageFolder("data/train", torchvision.transforms.ToTensor())
loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)
val = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder("data/val", data.transform), batch_size=256)
supernet = qs.train_supernet(model, loader, qs.SupernetSpec(epochs=2))
rows = supernet.sample(40, val_batches=val, bn_batches=loader)  # measured subnets: val top-1, BitOps, bytes
cqap = qs.fit_predictor(rows, qs.PredictorSpec(), supernet.space, seed=0)  # held-out tau etc.: cqap.report
budget = qs.SearchSpec(budget={"bitops": "W3A3"})  # at most the BitOps of uniform W3A3
found = qs.search_subnets(supernet.space, supernet.costs(), cqap.predictor.predict, budget, seed=0)  # NSGA-II
best = supernet.subnet(found.best().config, bn_batches=loader)  # measure it for real before you trust it
