""" Hierarchical Visual Transformer (HVT) in PyTorch

A PyTorch implementation of HVT as described in:
  * `Scalable Vision Transformers with Hierarchical Pooling` - https://arxiv.org/abs/2103.10619
    Zizheng Pan, Bohan Zhuang, Jing Liu, Haoyu He, Jianfei Cai, ICCV 2021

HVT is a pre-norm ViT without class token whose token sequence is max-pooled along the token axis once per
stage (after the first block of each stage), each pooled stage adding a position embedding of its own. The
head sees the mean of the last stage's tokens. Built from timm's own ViT parts; state dict keys follow the
authors' release (https://github.com/zhuang-group/HVT, Apache-2.0), so their checkpoints load unchanged.
"""
import math
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.jit import Final

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    LayerNorm,
    LayerType,
    PatchEmbed,
    calculate_drop_path_rates,
    get_act_layer,
    get_norm_layer,
    register_notrace_function,
    resample_abs_pos_embed,
    resample_patch_embed,
    to_2tuple,
    trunc_normal_,
)
from timm.models import (
    build_model_with_cfg,
    checkpoint,
    checkpoint_seq,
    clean_state_dict,
    generate_default_cfgs,
    named_apply,
    register_model,
    register_model_deprecations,
)
from timm.models.vision_transformer import Block, get_init_weights_vit, global_pool_nlc

# private: timm's index rules for forward_intermediates, which every timm model follows; timm.models does not export it
from timm.models._features import feature_take_indices
try:  # private, timm >= 1.0.31: records a resize so that save_for_hf writes the new size
    from timm.models._input import update_model_input_size
except ImportError:
    update_model_input_size = None

from .errors import CheckpointMismatchError
from .paper import ARXIV_ID
from .sources import pretrained_weights
from .token_grid import spread_tokens

__all__ = ['HierarchicalVisionTransformer']

GLOBAL_POOL_TYPES = ('', 'avg', 'avgmax', 'max', 'token')
POOL_TYPES = ('max', 'avg')
INIT_MODES = ('', 'jax', 'jax_nlhb', 'moco', 'reset')  # timm's ViT init modes; '' is DeiT's (the authors')


def pool_block_indices(
        depth: int,
        pool_block_width: Optional[int] = None,
        num_pool_stages: Optional[int] = None,
) -> Tuple[int, ...]:
    """Indices of the blocks followed by a pooling: every block i with i % pool_block_width == 0.

    Give either the block width (the authors' `pool_block_width`) or the number of pooling stages M (the paper's
    M; 0 turns pooling off). Neither given means one pooling stage, after the first block.
    """
    if pool_block_width is None:
        if num_pool_stages is None:
            num_pool_stages = 1
        if not 0 <= num_pool_stages <= depth:
            raise ValueError(f'num_pool_stages must be in [0, depth={depth}], got {num_pool_stages}')
        if num_pool_stages == 0:
            return ()
        pool_block_width = math.ceil(depth / num_pool_stages)
    if pool_block_width < 1:
        raise ValueError(f'pool_block_width must be >= 1, got {pool_block_width}')
    indices = tuple(range(0, depth, pool_block_width))
    if num_pool_stages is not None and len(indices) != num_pool_stages:
        raise ValueError(
            f'num_pool_stages={num_pool_stages} cannot be met with depth={depth}: pool_block_width '
            f'{pool_block_width} gives {len(indices)} pooling stages (after blocks {list(indices)})')
    return indices


def pooled_seq_lens(
        num_tokens: int,
        num_pools: int,
        kernel_size: int = 3,
        stride: int = 2,
        where: str = '',
) -> List[int]:
    """Sequence length after each of `num_pools` poolings; ValueError if one would get fewer tokens than its kernel."""
    lens: List[int] = []
    for i in range(num_pools):
        if num_tokens < kernel_size:
            raise ValueError(
                f'HVT pooling stage {i + 1} of {num_pools} needs at least pool_kernel_size={kernel_size} tokens, '
                f'but the sequence has {num_tokens}{where}. Use a larger image, a smaller patch, fewer pooling '
                f'stages or a smaller pool kernel.')
        num_tokens = (num_tokens - kernel_size) // stride + 1
        lens.append(num_tokens)
    return lens


def pool_tokens(x: torch.Tensor, kernel_size: int, stride: int, pool_type: str = 'max') -> torch.Tensor:
    """Max (or mean) pooling along the token axis of (B, N, C) tokens: (B, (N - kernel_size) // stride + 1, C),
    contiguous."""
    # the tokens seen as a channels-last (B, C, 1, N) image: torch's 2D pooling runs on them without a transposed
    # copy, and keeps the token count symbolic under torch.export (max_pool1d does not)
    x = x.unsqueeze(1).permute(0, 3, 1, 2)
    if pool_type == 'max':
        x = F.max_pool2d(x, (1, kernel_size), (1, stride))
    else:
        x = F.avg_pool2d(x, (1, kernel_size), (1, stride))
    return x.permute(0, 2, 3, 1).squeeze(1).contiguous()


def resample_pos_embed_1d(posemb: torch.Tensor, new_len: int, interpolation: str = 'linear') -> torch.Tensor:
    """Resample a (1, N, C) position embedding along its token axis to (1, new_len, C)."""
    orig_dtype = posemb.dtype
    posemb = F.interpolate(posemb.float().transpose(1, 2), size=new_len, mode=interpolation, align_corners=False)
    return posemb.transpose(1, 2).to(orig_dtype)


@torch.fx.wrap  # a leaf for plain torch.fx.symbolic_trace too, which knows only its own (as timm's pos_embed.py does)
@register_notrace_function  # a leaf in timm's FX graphs: the size check needs concrete sizes
def grid_pos_embed(
        pos_embed: torch.Tensor,
        grid_size: List[int],
        embed_grid_size: List[int],
        num_pools: int,
        pool_kernel_size: int = 3,
        pool_stride: int = 2,
) -> torch.Tensor:
    """The patch-grid position embedding of a `dynamic_img_size` model resampled to an input's `grid_size`; a
    ValueError when that grid has too few patches for `num_pools` poolings."""
    if torch.jit.is_scripting() or not torch.compiler.is_compiling():  # compiled and exported: symbolic sizes
        pooled_seq_lens(
            grid_size[0] * grid_size[1], num_pools, pool_kernel_size, pool_stride,
            f' at a {grid_size[0]}x{grid_size[1]} patch grid')
    return resample_abs_pos_embed(pos_embed, new_size=grid_size, old_size=embed_grid_size, num_prefix_tokens=0)


class PoolingBlock(Block):
    """timm's ViT block followed by HVT's token pooling: the block's output tokens are pooled along the sequence,
    then given a new position embedding.

    Prefix (class) tokens are kept out of the pooling and get no position embedding.
    """
    num_prefix_tokens: Final[int]
    dynamic_size: Final[bool]
    pool_kernel_size: Final[int]
    pool_stride: Final[int]
    pool_type: Final[str]

    def __init__(
            self,
            dim: int,
            num_heads: int,
            seq_len: int,
            pool_kernel_size: int = 3,
            pool_stride: int = 2,
            pool_type: str = 'max',
            num_prefix_tokens: int = 0,
            dynamic_size: bool = False,
            device=None,
            dtype=None,
            **block_kwargs,
    ) -> None:
        super().__init__(dim, num_heads, device=device, dtype=dtype, **block_kwargs)
        self.num_prefix_tokens = num_prefix_tokens
        self.dynamic_size = dynamic_size
        self.pool_kernel_size = pool_kernel_size
        self.pool_stride = pool_stride
        self.pool_type = pool_type
        self.pos_embed = nn.Parameter(torch.empty(1, seq_len, dim, device=device, dtype=dtype))

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        if torch.jit.is_scripting():
            # TorchScript cannot call super().forward: Block.forward's body
            x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
            x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        else:
            x = super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if self.num_prefix_tokens:
            prefix, x = x[:, :self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        else:
            prefix = None
        x = pool_tokens(x, self.pool_kernel_size, self.pool_stride, self.pool_type)
        if self.dynamic_size:
            x = x + resample_pos_embed_1d(self.pos_embed, x.shape[1])
        else:
            x = x + self.pos_embed
        if prefix is not None:
            x = torch.cat([prefix, x], dim=1)
        return x


class HierarchicalVisionTransformer(nn.Module):
    """ Hierarchical Visual Transformer (HVT)

    A PyTorch impl of : `Scalable Vision Transformers with Hierarchical Pooling`
        - https://arxiv.org/abs/2103.10619

    Features (`features_only`, `forward_intermediates`) are maps on the patch grid (NCHW, stride: the patch size):
    each block's tokens spread back onto the patches their pooling windows cover (see `tokens_to_grid`), so a pooled
    stage's map is piecewise constant along the rows. output_fmt='NLC' gives the tokens themselves.
    """
    dynamic_img_size: Final[bool]

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: Union[int, Tuple[int, int]] = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 384,
            depth: int = 12,
            num_heads: int = 6,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            pool_block_width: Optional[int] = None,
            num_pool_stages: Optional[int] = None,
            pool_kernel_size: int = 3,
            pool_stride: int = 2,
            pool_type: str = 'max',
            class_token: bool = False,
            dynamic_img_size: bool = False,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Optional[LayerType] = None,
            act_layer: Optional[LayerType] = None,
            device=None,
            dtype=None,
    ) -> None:
        """
        Args:
            img_size: Input image size.
            patch_size: Patch size.
            in_chans: Number of image input channels.
            num_classes: Number of classes for classification head (0 for none).
            global_pool: Pooling of the final tokens: 'avg' (the paper), 'token' (needs class_token),
                'max', 'avgmax', or '' for the unpooled (B, N, C) tokens.
            embed_dim: Transformer embedding dimension (64 * num_heads in the paper).
            depth: Number of transformer blocks.
            num_heads: Number of attention heads.
            mlp_ratio: Ratio of mlp hidden dim to embedding dim.
            qkv_bias: Enable bias for qkv projections.
            pool_block_width: Pool after every block i with i % pool_block_width == 0: the authors' own setting
                (their configs and checkpoint args), and the only way to state a schedule that M does not fix.
            num_pool_stages: The number of pooling stages M, the paper's (and the model names') way to state the
                same schedule, width ceil(depth / M); 0 turns pooling off. Give one of the two; neither means M=1.
            pool_kernel_size: Kernel of the 1D token pooling.
            pool_stride: Stride of the 1D token pooling.
            pool_type: 'max' (the paper) or 'avg' (its ablation).
            class_token: Prepend a class token, kept out of the token pooling (the paper's ablation).
            dynamic_img_size: Accept any input size, resampling every position embedding on the fly.
            drop_rate: Head dropout rate.
            pos_drop_rate: Dropout after the first position embedding.
            proj_drop_rate: Dropout after attention and MLP projections.
            attn_drop_rate: Attention dropout rate.
            drop_path_rate: Stochastic depth rate, reached linearly at the last block.
            norm_layer: Normalization layer (LayerNorm, eps 1e-6).
            act_layer: MLP activation layer (GELU).
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if global_pool not in GLOBAL_POOL_TYPES:
            raise ValueError(f'global_pool must be one of {GLOBAL_POOL_TYPES}, got {global_pool!r}')
        if global_pool == 'token' and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if pool_type not in POOL_TYPES:
            raise ValueError(f'pool_type must be one of {POOL_TYPES}, got {pool_type!r}')
        if embed_dim % num_heads:
            raise ValueError(f'embed_dim={embed_dim} is not divisible by num_heads={num_heads}')
        norm_layer = get_norm_layer(norm_layer) or LayerNorm
        act_layer = get_act_layer(act_layer) or nn.GELU

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.has_class_token = class_token
        self.dynamic_img_size = dynamic_img_size
        self.pool_kernel_size = pool_kernel_size
        self.pool_stride = pool_stride
        self.pool_blocks = pool_block_indices(depth, pool_block_width, num_pool_stages)
        self.grad_checkpointing = False

        embed_args = dict(strict_img_size=False, output_fmt='NHWC') if dynamic_img_size else {}
        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            **embed_args,
            **dd,
        )
        num_patches = self.patch_embed.num_patches
        seq_lens = self._pooled_seq_lens(self.patch_embed.grid_size)

        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim, **dd)) if class_token else None
        self.pos_embed = nn.Parameter(torch.empty(1, num_patches, embed_dim, **dd))
        self.pos_drop = nn.Dropout(p=pos_drop_rate)

        dpr = calculate_drop_path_rates(drop_path_rate, depth)  # linear, as in DeiT
        block_kwargs = dict(
            dim=embed_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            proj_drop=proj_drop_rate,
            attn_drop=attn_drop_rate,
            norm_layer=norm_layer,
            act_layer=act_layer,
            **dd,
        )
        blocks = []
        stage_lens = iter(seq_lens)
        for i in range(depth):
            if i in self.pool_blocks:
                blocks.append(PoolingBlock(
                    seq_len=next(stage_lens),
                    pool_kernel_size=pool_kernel_size,
                    pool_stride=pool_stride,
                    pool_type=pool_type,
                    num_prefix_tokens=self.num_prefix_tokens,
                    dynamic_size=dynamic_img_size,
                    drop_path=dpr[i],
                    depth=i,
                    **block_kwargs,
                ))
            else:
                blocks.append(Block(drop_path=dpr[i], depth=i, **block_kwargs))
        self.blocks = nn.Sequential(*blocks)
        self.feature_info = self._feature_info()
        self.norm = norm_layer(embed_dim, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        self.init_weights(needs_reset=False)

    def _pooled_seq_lens(self, grid_size: Sequence[int]) -> List[int]:
        where = f' at a {grid_size[0]}x{grid_size[1]} patch grid'
        return pooled_seq_lens(
            grid_size[0] * grid_size[1], len(self.pool_blocks), self.pool_kernel_size, self.pool_stride, where)

    def _feature_info(self) -> List[Dict[str, Any]]:
        r = self.patch_embed.feat_ratio()  # every block's map lies on the patch grid (see the class docstring)
        return [dict(module=f'blocks.{i}', num_chs=self.embed_dim, reduction=r) for i in range(len(self.blocks))]

    def init_weights(self, mode: str = '', needs_reset: bool = True) -> None:
        """Initialize the weights: every position embedding trunc_normal(.02), then timm's ViT init of `mode`.

        Args:
            mode: '' for DeiT's init, the authors' (trunc_normal(.02) Linear weights, zero biases, LN 1/0), or
                one of timm's other ViT modes ('jax', 'jax_nlhb', 'moco', 'reset').
            needs_reset: Call reset_parameters() on the modules that have it; False when they have just
                initialized themselves.
        """
        if mode not in INIT_MODES:
            raise ValueError(f'init mode must be one of {INIT_MODES}, got {mode!r}')
        for name, param in self.named_parameters():
            if name.endswith('pos_embed'):
                trunc_normal_(param, std=.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        head_bias = -math.log(self.num_classes) if mode == 'jax_nlhb' and self.num_classes > 0 else 0.
        named_apply(get_init_weights_vit(mode, head_bias, needs_reset=needs_reset), self)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {'cls_token'} | {name for name, _ in self.named_parameters() if name.endswith('pos_embed')}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^cls_token|^pos_embed|^patch_embed',
            blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            if global_pool not in GLOBAL_POOL_TYPES:
                raise ValueError(f'global_pool must be one of {GLOBAL_POOL_TYPES}, got {global_pool!r}')
            if global_pool == 'token' and not self.has_class_token:
                raise ValueError("global_pool='token' needs a model built with class_token=True")
            self.global_pool = global_pool
        self.num_classes = num_classes
        dd = dict(device=self.pos_embed.device, dtype=self.pos_embed.dtype)
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    @torch.jit.ignore
    def set_input_size(
            self,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            patch_size: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> None:
        """Change the input resolution and/or patch size, resampling every position embedding (and the patch
        kernel). Nothing changes if the new size leaves a pooling stage with too few tokens."""
        prev_grid_size = self.patch_embed.grid_size
        new_patch = to_2tuple(patch_size) if patch_size is not None else self.patch_embed.patch_size
        new_img = to_2tuple(img_size) if img_size is not None else self.patch_embed.img_size
        new_grid = (new_img[0] // new_patch[0], new_img[1] // new_patch[1])
        new_lens = self._pooled_seq_lens(new_grid)  # validates before anything is changed

        self.patch_embed.set_input_size(img_size=img_size, patch_size=patch_size)
        if self.patch_embed.grid_size != prev_grid_size:
            self.pos_embed = nn.Parameter(resample_abs_pos_embed(
                self.pos_embed,
                new_size=self.patch_embed.grid_size,
                old_size=prev_grid_size,
                num_prefix_tokens=0,
            ), requires_grad=self.pos_embed.requires_grad)
            for idx, new_len in zip(self.pool_blocks, new_lens):
                blk = self.blocks[idx]
                blk.pos_embed = nn.Parameter(
                    resample_pos_embed_1d(blk.pos_embed, new_len), requires_grad=blk.pos_embed.requires_grad)
        self.feature_info = self._feature_info()
        if update_model_input_size is not None:
            update_model_input_size(self, self.patch_embed.img_size, patch_size=patch_size)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_img_size:
            B, H, W, C = x.shape
            pos_embed = grid_pos_embed(
                self.pos_embed,
                [H, W],
                list(self.patch_embed.grid_size),
                len(self.pool_blocks),
                self.pool_kernel_size,
                self.pool_stride,
            )
            x = x.view(B, -1, C)
        else:
            pos_embed = self.pos_embed
        # pos_embed first: the sum takes its token-major layout rather than the channel-major strides of the patch
        # embedding's transposed view, which every later residual add would keep (each LayerNorm copying its input)
        x = pos_embed + x
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features, also returning the features of the selected blocks.

        Args:
            x: Input image tensor.
            indices: Take last n blocks if int, all if None, select matching indices if sequence.
            return_prefix_tokens: Return (tokens, prefix tokens) pairs when the model has a class token.
            norm: Apply the final norm layer to all intermediates.
            stop_early: Stop iterating over blocks when last desired intermediate hit.
            output_fmt: 'NCHW' (B, C, H, W) maps on the patch grid (see the class docstring) or 'NLC' (B, tokens, C).
            intermediates_only: Only return intermediate features.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got '{output_fmt}'")
        intermediates = []
        stage_pools: List[int] = []  # the poolings before each intermediate
        num_pools = 0
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)

        x = self.patch_embed(x)
        grid = [x.shape[1], x.shape[2]] if self.dynamic_img_size else list(self.patch_embed.grid_size)
        x = self._pos_embed(x)

        if torch.jit.is_scripting() or not stop_early:
            blocks = self.blocks
        else:
            blocks = self.blocks[:max_index + 1]
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
            if i in self.pool_blocks:
                num_pools += 1
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
                stage_pools.append(num_pools)

        if self.num_prefix_tokens:
            prefix_tokens = [y[:, 0:self.num_prefix_tokens] for y in intermediates]
            intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        else:
            prefix_tokens = None
        if output_fmt == 'NCHW':
            intermediates = [spread_tokens(y, grid, n, self.pool_stride) for y, n in zip(intermediates, stage_pools)]

        if not torch.jit.is_scripting() and return_prefix_tokens and prefix_tokens is not None:
            intermediates = list(zip(intermediates, prefix_tokens))

        if intermediates_only:
            return intermediates
        x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last requested intermediate (and optionally the final norm / head)."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.pool_blocks = tuple(i for i in self.pool_blocks if i <= max_index)
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        x = self.norm(x)
        return x

    def pool(self, x: torch.Tensor, pool_type: Optional[str] = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        return global_pool_nlc(x, pool_type=pool_type, num_prefix_tokens=self.num_prefix_tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


def _layout(shapes: Dict[str, torch.Size]) -> Dict[str, Any]:
    """What the key names and shapes of an HVT state dict say about its architecture."""
    blocks = {int(k.split('.')[1]) for k in shapes if k.startswith('blocks.') and k.split('.')[1].isdigit()}
    return dict(
        embed_dim=shapes['pos_embed'][-1] if 'pos_embed' in shapes else None,
        depth=max(blocks) + 1 if blocks else 0,
        pooled_after=sorted(i for i in blocks if f'blocks.{i}.pos_embed' in shapes),
        mlp_hidden=shapes['blocks.0.mlp.fc1.weight'][0] if 'blocks.0.mlp.fc1.weight' in shapes else None,
        class_token='cls_token' in shapes,
    )


def _describe(layout: Dict[str, Any]) -> str:
    text = ', '.join(f'{k} {v}' for k, v in layout.items())
    if layout['depth'] == 12 and not layout['class_token'] and layout['mlp_hidden'] == 4 * (layout['embed_dim'] or 0):
        size = {192: 'ti', 384: 's'}.get(layout['embed_dim'])
        stages = len(layout['pooled_after'])
        if size and stages <= 4 and tuple(layout['pooled_after']) == pool_block_indices(12, num_pool_stages=stages):
            text += f' (the layout of hvt_{size}_{stages})'
    return text


def source_grid_size(
        num_tokens: int,
        patch_size: Sequence[int],
        img_sizes: Sequence[Any] = (),
        grid_size: Optional[Sequence[int]] = None,
) -> Tuple[int, int]:
    """The patch grid (H, W) a position embedding of `num_tokens` tokens was trained on.

    The grid of the first image size in `img_sizes` (what the checkpoint's metadata states) that gives `num_tokens`
    patches of `patch_size` (the checkpoint's patch kernel); else `grid_size` (the model's own) when it holds as many
    tokens; else a square grid. CheckpointMismatchError when none of these fits.
    """
    stated = []
    for size in img_sizes:
        if size is None:
            continue
        height, width = to_2tuple(size) if isinstance(size, int) else tuple(size)[-2:]
        grid = (height // patch_size[0], width // patch_size[1])
        if grid[0] * grid[1] == num_tokens:
            return grid
        stated.append(f'{height}x{width} gives a {grid[0]}x{grid[1]} grid of {grid[0] * grid[1]}')
    if grid_size is not None and grid_size[0] * grid_size[1] == num_tokens:
        return grid_size[0], grid_size[1]
    side = math.isqrt(num_tokens)
    if side * side == num_tokens:
        return side, side
    message = f"Cannot tell the patch grid of the checkpoint's pos_embed: {num_tokens} tokens are not a square grid"
    if stated:
        message += f', and no stated image size fits (patch {patch_size[0]}x{patch_size[1]}: {"; ".join(stated)})'
    raise CheckpointMismatchError(
        f'{message}. State the image size the weights were trained at, e.g. '
        f'pretrained_cfg_overlay=dict(input_size=(3, H, W))')


def _stated_img_sizes(model: nn.Module) -> List[Any]:
    """The image sizes the metadata of the weights loaded into `model` states: the img_size of the source's model
    args (timm >= 1.0.31 keeps them for hf-hub: and local-dir: names), then the pretrained cfg's input size."""
    source_args = getattr(model, 'pretrained_model_args', None) or {}
    input_size = (getattr(model, 'pretrained_cfg', None) or {}).get('input_size')
    return [source_args.get('img_size'), input_size[-2:] if input_size else None]


def checkpoint_filter_fn(
        state_dict: Dict[str, Any],
        model: HierarchicalVisionTransformer,
        interpolation: str = 'bicubic',
        antialias: bool = True,
) -> Dict[str, torch.Tensor]:
    """Fit a checkpoint to `model`: the authors' training-script files (weights under 'model'), bare state dicts and
    timm's own exports; 'module.' prefixes are dropped, and the patch-grid position embedding (2D), each pooled
    stage's embedding (1D) and the patch kernel are resampled to the model's sizes.

    The checkpoint's patch grid is the one its metadata states (the model's pretrained cfg input size, and the
    source's model args where timm keeps them), else the model's own grid when the token count matches, else a
    square one (see `source_grid_size`); the embedding is resampled whenever that grid differs from the model's.
    A checkpoint of another variant raises CheckpointMismatchError naming what it holds and what the model
    expects. Heads of another class count and kernels of another channel count are left to timm's pretrained
    loader (or torch's errors).
    """
    if isinstance(state_dict.get('model'), dict):
        state_dict = state_dict['model']
    state_dict = clean_state_dict({k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)})
    target = {k: v.shape for k, v in model.state_dict().items()}
    have, want = _layout({k: v.shape for k, v in state_dict.items()}), _layout(target)
    if have != want:
        name = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__
        raise CheckpointMismatchError(
            f'The checkpoint does not fit {name}: it holds {_describe(have)}; the model expects {_describe(want)}')

    kernel = state_dict.get('patch_embed.proj.weight')
    old_grid = source_grid_size(
        state_dict['pos_embed'].shape[1],
        kernel.shape[-2:] if kernel is not None else model.patch_embed.patch_size,
        _stated_img_sizes(model),
        model.patch_embed.grid_size,
    )
    new_grid = tuple(model.patch_embed.grid_size)
    if kernel is not None and kernel.shape[-2:] != target['patch_embed.proj.weight'][-2:]:
        state_dict['patch_embed.proj.weight'] = resample_patch_embed(
            kernel, list(model.patch_embed.patch_size), interpolation=interpolation, antialias=antialias)
    if old_grid != new_grid:
        state_dict['pos_embed'] = resample_abs_pos_embed(
            state_dict['pos_embed'], new_size=list(new_grid), old_size=list(old_grid),
            num_prefix_tokens=0, interpolation=interpolation, antialias=antialias)
    for i in want['pooled_after']:
        key, new_len = f'blocks.{i}.pos_embed', target[f'blocks.{i}.pos_embed'][1]
        if state_dict[key].shape[1] != new_len:
            state_dict[key] = resample_pos_embed_1d(state_dict[key], new_len)
    return state_dict


def _create_hvt(variant: str, pretrained: bool = False, **kwargs) -> HierarchicalVisionTransformer:
    out_indices = kwargs.pop('out_indices', 3)
    # until the hub repos are published and pinned, the weights are found (or fetched) before timm reads them
    with (pretrained_weights(variant, kwargs, RELEASE_SHA256) if pretrained else nullcontext()) as overlay:
        return build_model_with_cfg(
            HierarchicalVisionTransformer,
            variant,
            pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
            **(dict(kwargs, pretrained_cfg_overlay=overlay) if overlay else kwargs),
        )


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': None,
        'crop_pct': .875,
        'interpolation': 'bicubic',
        'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj',
        'classifier': 'head',
        'license': 'apache-2.0',
        'paper_ids': f'arXiv:{ARXIV_ID}',
        'paper_name': 'Scalable Vision Transformers with Hierarchical Pooling',
        'origin_url': 'https://github.com/zhuang-group/HVT',
        **kwargs,
    }


# The hub repos hold the authors' release files converted by `timm-hvt publish`. A repo is used only once its
# revision is pinned here ('<repo>@<commit>'); until then the weights come from the release file.
default_cfgs = generate_default_cfgs({
    'hvt_ti_0': _cfg(),
    'hvt_ti_1.in1k': _cfg(
        hf_hub_id='timm-hvt/hvt_ti_1.in1k',
        url='https://github.com/zhuang-group/HVT/releases/download/v1.0/hvt_ti_1.pth'),
    'hvt_ti_2': _cfg(),
    'hvt_ti_3': _cfg(),
    'hvt_ti_4': _cfg(),
    'hvt_s_0.in1k': _cfg(
        hf_hub_id='timm-hvt/hvt_s_0.in1k',
        url='https://github.com/zhuang-group/HVT/releases/download/v1.0/hvt_s_0.pth'),
    'hvt_s_1.in1k': _cfg(
        hf_hub_id='timm-hvt/hvt_s_1.in1k',
        url='https://github.com/zhuang-group/HVT/releases/download/v1.1/hvt_s_1.pth'),
    'hvt_s_2.in1k': _cfg(
        hf_hub_id='timm-hvt/hvt_s_2.in1k',
        url='https://github.com/zhuang-group/HVT/releases/download/v1.0/hvt_s_2.pth'),
    'hvt_s_3.in1k': _cfg(
        hf_hub_id='timm-hvt/hvt_s_3.in1k',
        url='https://github.com/zhuang-group/HVT/releases/download/v1.0/hvt_s_3.pth'),
    'hvt_s_4.in1k': _cfg(
        hf_hub_id='timm-hvt/hvt_s_4.in1k',
        url='https://github.com/zhuang-group/HVT/releases/download/v1.0/scale_hvt_ti_4.pth'),
})

# sha256 of each tag's release file (None: not yet known), checked on download and before a cached copy is used
RELEASE_SHA256: Dict[str, Optional[str]] = {
    'hvt_ti_1.in1k': None,
    'hvt_s_0.in1k': None,
    'hvt_s_1.in1k': None,
    'hvt_s_2.in1k': None,
    'hvt_s_3.in1k': None,
    'hvt_s_4.in1k': None,
}


@register_model
def hvt_ti_0(pretrained: bool = False, **kwargs) -> HierarchicalVisionTransformer:
    """HVT-Ti without pooling (M=0)."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, num_pool_stages=0)
    return _create_hvt('hvt_ti_0', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def hvt_ti_1(pretrained: bool = False, **kwargs) -> HierarchicalVisionTransformer:
    """HVT-Ti-1: one pooling stage."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, num_pool_stages=1)
    return _create_hvt('hvt_ti_1', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def hvt_ti_2(pretrained: bool = False, **kwargs) -> HierarchicalVisionTransformer:
    """HVT-Ti with 2 pooling stages."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, num_pool_stages=2)
    return _create_hvt('hvt_ti_2', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def hvt_ti_3(pretrained: bool = False, **kwargs) -> HierarchicalVisionTransformer:
    """HVT-Ti with 3 pooling stages."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, num_pool_stages=3)
    return _create_hvt('hvt_ti_3', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def hvt_ti_4(pretrained: bool = False, **kwargs) -> HierarchicalVisionTransformer:
    """HVT-Ti with 4 pooling stages."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, num_pool_stages=4)
    return _create_hvt('hvt_ti_4', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def hvt_s_0(pretrained: bool = False, **kwargs) -> HierarchicalVisionTransformer:
    """HVT-S without pooling (M=0)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, num_pool_stages=0)
    return _create_hvt('hvt_s_0', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def hvt_s_1(pretrained: bool = False, **kwargs) -> HierarchicalVisionTransformer:
    """HVT-S-1: one pooling stage."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, num_pool_stages=1)
    return _create_hvt('hvt_s_1', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def hvt_s_2(pretrained: bool = False, **kwargs) -> HierarchicalVisionTransformer:
    """HVT-S-2: two pooling stages."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, num_pool_stages=2)
    return _create_hvt('hvt_s_2', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def hvt_s_3(pretrained: bool = False, **kwargs) -> HierarchicalVisionTransformer:
    """HVT-S-3: three pooling stages."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, num_pool_stages=3)
    return _create_hvt('hvt_s_3', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def hvt_s_4(pretrained: bool = False, **kwargs) -> HierarchicalVisionTransformer:
    """HVT-S-4, the paper's "Scale HVT-Ti-4": four pooling stages."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, num_pool_stages=4)
    return _create_hvt('hvt_s_4', pretrained=pretrained, **dict(model_args, **kwargs))


register_model_deprecations(__name__, {'scale_hvt_ti_4': 'hvt_s_4.in1k'})
